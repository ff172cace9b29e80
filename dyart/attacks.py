"""Projected gradient descent (Madry et al., ICLR 2018) for training and validation.

Vectorised over the batch and free of host synchronisation inside the loop. The
attack leaves the model's mode alone: callers that want BatchNorm frozen (TRADES,
MART, validation) put the model in eval mode around it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOSSES = ("ce", "cw", "kl")
STARTS = (True, False, "uniform", "normal")


def attack_loss(logits: Tensor, y: Tensor, loss: str, target: Tensor | None = None) -> Tensor:
    """Summed per-example loss the attack ascends.

    Args:
        logits: ``[N, C]`` logits at the adversarial point.
        y: ``[N]`` labels.
        loss: ``"ce"`` cross-entropy; ``"cw"`` the margin max_{j≠y} z_j − z_y
            (Carlini & Wagner, 2017); ``"kl"`` KL(p(x) ‖ p(x_adv)) as in TRADES
            (Zhang et al., ICML 2019, eq. 5), with ``target`` the clean logits.
        target: clean logits, required for ``"kl"``.
    """
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="sum")
    if loss == "cw":
        true = logits.gather(1, y[:, None]).squeeze(1)
        others = logits.scatter(1, y[:, None], -torch.inf)
        return (others.amax(dim=1) - true).sum()
    if loss == "kl":
        if target is None:
            raise ValueError("the KL attack loss needs the clean logits as target")
        clean = F.softmax(target.detach(), dim=1)
        return F.kl_div(F.log_softmax(logits, dim=1), clean, reduction="sum")
    raise ValueError(f"attack loss must be one of {', '.join(LOSSES)}, got {loss!r}")


def pgd_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    loss: str = "ce",
    random_start: bool | str = True,
    norm: str = "linf",
    generator: torch.Generator | None = None,
    target: Tensor | None = None,
) -> Tensor:
    """Adversarial images by projected gradient ascent on ``loss``.

    Args:
        model: maps images in [0,1] to logits; its mode is left unchanged.
        x: ``[N, C, H, W]`` clean images in [0,1].
        y: ``[N]`` labels.
        eps: radius of the threat-model ball.
        step_size: step per iteration (L-inf: along the gradient sign; L2: along
            the normalised gradient).
        steps: iterations.
        loss: ``"ce"``, ``"cw"`` or ``"kl"`` (see :func:`attack_loss`).
        random_start: ``True``/``"uniform"`` uniform in the ball, ``"normal"`` a
            0.001·N(0,1) start (TRADES, MART), ``False`` start at x.
        norm: ``"linf"`` or ``"l2"``.
        generator: random generator for the start.
        target: clean logits for ``loss="kl"`` (computed without grad if omitted).

    Returns:
        Detached adversarial images in [0,1] within ``eps`` of ``x``.
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be linf or l2, got {norm!r}")
    if random_start not in STARTS:
        raise ValueError(f"random_start must be one of {STARTS}, got {random_start!r}")
    x = x.detach()
    if loss == "kl" and target is None:
        with torch.no_grad():
            target = model(x)
    x_adv = _start(x, eps, random_start, norm, generator)
    for _ in range(steps):
        with torch.enable_grad():
            x_adv.requires_grad_(True)
            value = attack_loss(model(x_adv), y, loss, target)
            (grad,) = torch.autograd.grad(value, x_adv)
        x_adv = _ascend(x, x_adv.detach(), grad, eps, step_size, norm)
    return x_adv.detach()


def _start(x: Tensor, eps: float, kind: bool | str, norm: str, generator) -> Tensor:
    """The starting point of the attack, clipped to [0,1]."""
    if kind is False:
        return x.clone()
    if kind == "normal":
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return (x + 0.001 * noise).clamp(0, 1)
    if norm == "linf":
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return (x + eps * (2 * noise - 1)).clamp(0, 1)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    radius = torch.rand(x.shape[:1], generator=generator, dtype=x.dtype, device=x.device)
    noise = noise * (eps * radius / _l2(noise)).view(-1, *[1] * (x.ndim - 1))
    return (x + noise).clamp(0, 1)


def _ascend(x: Tensor, x_adv: Tensor, grad: Tensor, eps: float, step: float, norm: str) -> Tensor:
    """One ascent step, then projection onto the eps-ball around x and the box."""
    shape = (-1, *[1] * (x.ndim - 1))
    if norm == "linf":
        delta = (x_adv + step * grad.sign() - x).clamp(-eps, eps)
    else:
        delta = x_adv + step * grad / _l2(grad).view(shape) - x
        delta = delta * (eps / _l2(delta)).clamp_max(1.0).view(shape)
    return (x + delta).clamp(0, 1)


def _l2(v: Tensor) -> Tensor:
    """Per-example L2 norm, kept away from zero."""
    return v.flatten(1).norm(dim=1).clamp_min(1e-12)
