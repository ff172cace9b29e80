"""TRADES (Zhang et al., ICML 2019).

L = CE(f(x), y) + β·(1/N)·Σ_i KL(p(x_i) ‖ p(x_adv,i)), with x_adv from PGD-10 on
the KL term starting at x + 0.001·N(0,1), BatchNorm frozen (eval mode) during the
attack. The published code silently adds label smoothing 0.1 to the clean term;
here it is the visible ``label_smoothing`` option, off by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dyart.attacks import pgd_attack
from dyart.methods.base import Method, accuracy, check_ranges, eval_mode


def trades_loss(
    logits: Tensor, logits_adv: Tensor, y: Tensor, beta: float, label_smoothing: float = 0.0
) -> Tensor:
    """TRADES objective (Zhang et al., eq. 5): CE + β·mean KL(p(x) ‖ p(x_adv)).

    Gradients flow through both the clean and the adversarial logits.
    """
    natural = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1), reduction="sum")
    return natural + beta * kl / logits.shape[0]


class TRADES(Method):
    """TRADES; hyperparameters eps, step_size, steps, beta, label_smoothing."""

    name = "trades"

    def step(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        h = self.hparams
        eps, step_size = self.attack_radius()
        with eval_mode(model):
            with torch.no_grad():
                target = model(x)
            check_ranges(x, y, target.shape[1])
            x_adv = pgd_attack(
                model,
                x,
                y,
                eps=eps,
                step_size=step_size,
                steps=h["steps"],
                loss="kl",
                random_start="normal",
                target=target,
            )
        logits, logits_adv = model(x), model(x_adv)
        loss = trades_loss(logits, logits_adv, y, h["beta"], h["label_smoothing"])
        metrics = {
            "loss": loss.detach(),
            "clean_acc": accuracy(logits, y),
            "robust_acc": accuracy(logits_adv, y),
        }
        return loss, metrics
