"""PGD adversarial training (Madry et al., ICLR 2018).

min_θ E max_{‖δ‖∞≤eps} CE(f_θ(x+δ), y): the inner maximum by PGD-10 on the
cross-entropy from a uniform random start, the loss on the adversarial images only.
The attack runs with BatchNorm frozen (eval mode), as for TRADES and MART, so the
attack's forward passes leave the running statistics alone; the clean accuracy
metric comes from one extra eval-mode forward without autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dyart.attacks import pgd_attack
from dyart.methods.base import Method, accuracy, check_ranges, eval_mode


def pgd_at_loss(logits_adv: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy on the adversarial logits (Madry et al., eq. 2.1)."""
    return F.cross_entropy(logits_adv, y)


class PGDAT(Method):
    """Madry's PGD adversarial training; hyperparameters eps, step_size, steps."""

    name = "pgd_at"

    def step(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        h = self.hparams
        eps, step_size = self.attack_radius()
        with eval_mode(model), torch.no_grad():
            clean_logits = model(x)
        check_ranges(x, y, clean_logits.shape[1])
        with eval_mode(model):
            x_adv = pgd_attack(
                model,
                x,
                y,
                eps=eps,
                step_size=step_size,
                steps=h["steps"],
                loss="ce",
                random_start=h["random_start"],
            )
        logits_adv = model(x_adv)
        loss = pgd_at_loss(logits_adv, y)
        metrics = {
            "loss": loss.detach(),
            "clean_acc": accuracy(clean_logits, y),
            "robust_acc": accuracy(logits_adv, y),
        }
        return loss, metrics
