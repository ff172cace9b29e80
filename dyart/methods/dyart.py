"""DyART: Dynamics-Aware Robust Training (Xu et al., ICLR 2023, arXiv:2302.03015).

The step (ALGORITHM.md §5): cross-entropy on the clean batch, plus a term that
pushes the decision boundary away from each correct point at its closest boundary
point x̂, weighted to favour the smallest margins:

    L = CE(f(x), y) + λ·(1/N)·Σ_{i kept} w_i·(−φ_θ(x̂_i)),
    w_i = h'(R_i) / ‖∇xφ(x̂_i)‖_*,   h'(R) = exp(−α·R)·[R < r0].

By the implicit function theorem ∇θR = ∇θφ(x̂)/‖∇xφ(x̂)‖_* (§2), so descending
this loss ascends Σ h(R_i). x̂ comes from :func:`dyart.methods.boundary.find_boundary`.

Choices where the published code has quirks (ALGORITHM.md §6b):

* **Per-point mixing weight.** The published search applies the first point's
  mixing weight ``a`` to the whole batch (a stray ``[0]`` inherited from an old
  FAB copy, fixed upstream); we use each point's own ``a``.
* **No kept point.** A batch where no boundary point passes the filter (or no
  point is correct) has boundary term 0 and the step proceeds on the CE alone;
  ``frac_kept`` is 0 and the margin quantiles are NaN, so the metrics say so.
* **L2 optimality check.** The published code trains only with L-inf. For L2 the
  filter of §4 uses the analogous condition: cosine(δ, −∇xφ(x̂)) > 0.9.
* **Fused crossing check** (``fused_check``, off by default; not in the paper).
  The search checks each crossing with the next iteration's gradient pass instead
  of a separate forward, and after a crossing steps on the hyperplane linearised at
  the crossing point (:mod:`dyart.methods.boundary`): about a quarter less search
  work for the same number of iterations.
* **BatchNorm.** The search runs in eval mode but the boundary term, as published,
  is computed in train mode: with BatchNorm φ(x̂) in the loss is then not ≈ 0, and
  the x̂ batch updates the running statistics. That is the default because it
  produced the paper's results. ``freeze_bn=True`` computes the boundary term
  with BatchNorm layers in eval mode instead (running statistics used, not
  updated), so the pushed φ is the one the search saw.
* **Which points are correct.** φ(x) > 1e-9 in eval mode, as the search sees the
  model (§3). For a model whose train and eval modes compute the same function (no
  BatchNorm running statistics, no dropout) these are the clean logits the CE term
  computes anyway, so no extra pass is spent. Otherwise one forward in eval mode
  decides, before the clean train-mode forward, so the search's running statistics
  do not yet include this batch (the published order).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dyart.methods.base import (
    Method,
    accuracy,
    check_ranges,
    eval_mode,
    frozen_batch_norm,
    modes_agree,
)
from dyart.methods.boundary import BoundaryResult, dual_norm, find_boundary, soft_margin


def margin_weights(
    margin: Tensor, grad: Tensor, kept: Tensor, *, r0: float, alpha: float, norm: str
) -> Tensor:
    """Detached weights w_i = h'(R_i)/‖∇xφ(x̂_i)‖_* of ALGORITHM.md §2 (0 where not kept).

    Args:
        margin: ``[N]`` margins R (inf where not found).
        grad: ``[N, ...]`` gradients ∇xφ(x̂).
        kept: ``[N]`` mask of points in the boundary term.
        r0: margins ≥ r0 get weight 0.
        alpha: α of h'(R) = exp(−α·R); values below 0.01 are raised to 0.01.
        norm: threat model; the dual norm is L1 for ``"linf"`` and L2 for ``"l2"``.
    """
    alpha = max(alpha, 0.01)
    slope = torch.where(margin < r0, torch.exp(-alpha * margin.clamp_max(r0)), 0.0)
    scale = dual_norm(grad.flatten(1), norm).clamp_min(1e-12)
    return torch.where(kept, slope / scale, 0.0).detach()


def dyart_loss(
    logits: Tensor, y: Tensor, phi_hat: Tensor, weights: Tensor, lam_robust: float
) -> Tensor:
    """The DyART loss of ALGORITHM.md §5.

    Args:
        logits: ``[N, C]`` clean logits (train mode).
        y: ``[N]`` labels.
        phi_hat: ``[K]`` φ_θ(x̂) at the K kept boundary points.
        weights: ``[K]`` their detached weights w.
        lam_robust: λ.

    Returns:
        CE(f(x), y) + λ·(1/N)·Σ_k w_k·(−φ_θ(x̂_k)), the sum divided by the full N.
    """
    boundary = (weights.detach() * -phi_hat).sum() / logits.shape[0]
    return F.cross_entropy(logits, y) + lam_robust * boundary


class DyART(Method):
    """DyART training step; hyperparameters as in ``dyart.catalog.METHODS["dyart"]``."""

    name = "dyart"

    def step(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        h = self.hparams
        same = modes_agree(model)
        if same:
            logits = model(x)
            search_logits = logits.detach()
        else:
            with torch.no_grad(), eval_mode(model):
                search_logits = model(x)
        check_ranges(x, y, search_logits.shape[1])
        found = find_boundary(
            model,
            x,
            y,
            norm=h["norm"],
            iterations=h["iterations"],
            eps=h["eps_fab"],
            temperature=h["temperature"],
            restarts=h["restarts"],
            alpha_max=h["alpha_max"],
            eta=h["eta"],
            beta_back=h["beta_back"],
            fused_check=h["fused_check"],
            logits=search_logits,
        )
        if not same:
            logits = model(x)
        weights = margin_weights(
            found.margin, found.grad, found.kept, r0=h["r0"], alpha=h["alpha"], norm=h["norm"]
        )
        rows = found.kept.nonzero().squeeze(1)  # host sync, after the search
        if rows.numel():
            with frozen_batch_norm(model, h["freeze_bn"]):
                phi_hat = soft_margin(model(found.x_hat[rows]), y[rows], h["temperature"])
        else:
            phi_hat = logits.new_zeros(0)
        loss = dyart_loss(logits, y, phi_hat, weights[rows], h["lam_robust"])
        return loss, boundary_metrics(loss, logits, y, found, h["eps_fab"])


def boundary_metrics(
    loss: Tensor, logits: Tensor, y: Tensor, found: BoundaryResult, eps: float
) -> dict[str, Tensor]:
    """Batch metrics of ALGORITHM.md §5, as 0-dim tensors (no host sync)."""
    clean_acc = accuracy(logits, y)
    kept = found.kept
    kept_margins = torch.where(kept, found.margin, math.nan).float()
    q10, q50, q90 = (torch.nanquantile(kept_margins, q) for q in (0.1, 0.5, 0.9))
    beyond = (kept & (found.margin > eps)).float().sum() / kept.float().sum()
    robust_est = beyond * clean_acc
    out: dict[str, Any] = {
        "loss": loss.detach(),
        "clean_acc": clean_acc,
        "robust_acc": robust_est,
        "robust_est": robust_est,
        "frac_correct": found.correct.float().mean(),
        "frac_found": found.found.float().mean(),
        "frac_kept": kept.float().mean(),
        "margin_q10": q10,
        "margin_q50": q50,
        "margin_q90": q90,
    }
    return out
