"""Clean training: cross-entropy on the unperturbed batch (the burn-in stage)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from dyart.methods.base import Method, accuracy, check_ranges


def clean_loss(logits: Tensor, y: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy, optionally with label smoothing (Szegedy et al., 2016)."""
    return F.cross_entropy(logits, y, label_smoothing=label_smoothing)


class Clean(Method):
    """Cross-entropy on clean images; ``label_smoothing`` defaults to 0."""

    name = "clean"

    def step(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        logits = model(x)
        check_ranges(x, y, logits.shape[1])
        loss = clean_loss(logits, y, self.hparams["label_smoothing"])
        return loss, {"loss": loss.detach(), "clean_acc": accuracy(logits, y)}
