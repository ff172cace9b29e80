"""MART: misclassification-aware adversarial training (Wang et al., ICLR 2020).

L = BCE(p(x_adv), y) + β·(1/N)·Σ_i KL(p(x_i) ‖ p(x_adv,i))·(1 − p_y(x_i)), where the
boosted cross-entropy BCE = CE(p(x_adv), y) − log(1 − max_{k≠y} p_k(x_adv)) adds a
margin term. x_adv comes from PGD-10 on the cross-entropy from x + 0.001·N(0,1)
with BatchNorm frozen (eval mode). Small constants (1.0001, 1e-12, 1.0000001) are
those of the published implementation, to keep logarithms finite.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dyart.attacks import pgd_attack
from dyart.methods.base import Method, accuracy, check_ranges, eval_mode


def mart_loss(logits: Tensor, logits_adv: Tensor, y: Tensor, beta: float) -> Tensor:
    """MART objective (Wang et al., eq. 8)."""
    probs_adv = F.softmax(logits_adv, dim=1)
    is_true = F.one_hot(y, logits.shape[1]).bool()
    runner_up = probs_adv.masked_fill(is_true, -1.0).amax(dim=1)
    boosted = F.cross_entropy(logits_adv, y) - torch.log(1.0001 - runner_up + 1e-12).mean()
    probs = F.softmax(logits, dim=1)
    kl = (probs * (torch.log(probs + 1e-12) - torch.log(probs_adv + 1e-12))).sum(dim=1)
    true_prob = probs.gather(1, y[:, None]).squeeze(1)
    return boosted + beta * (kl * (1.0000001 - true_prob)).mean()


class MART(Method):
    """MART; hyperparameters eps, step_size, steps, beta."""

    name = "mart"

    def step(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        h = self.hparams
        eps, step_size = self.attack_radius()
        logits = model(x)
        check_ranges(x, y, logits.shape[1])
        with eval_mode(model):
            x_adv = pgd_attack(
                model,
                x,
                y,
                eps=eps,
                step_size=step_size,
                steps=h["steps"],
                loss="ce",
                random_start="normal",
            )
        logits_adv = model(x_adv)
        loss = mart_loss(logits, logits_adv, y, h["beta"])
        metrics = {
            "loss": loss.detach(),
            "clean_acc": accuracy(logits, y),
            "robust_acc": accuracy(logits_adv, y),
        }
        return loss, metrics
