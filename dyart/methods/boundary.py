"""The closest point on the soft decision boundary (ALGORITHM.md §1, §3, §4).

DyART needs, for each correctly classified point x0, the point x̂ of the zero level
set of the soft margin φ closest to x0 in the threat-model norm. We find it with
FAB's iteration (Croce & Hein, ICML 2020) applied to the single scalar function φ:
linearise φ at the current iterate, project both the iterate and x0 onto the
hyperplane inside the box [0,1]^d, mix the two steps, overshoot, and step back
towards x0 after each crossing.

Cost per iteration is exactly one forward+backward (φ and ∇xφ at the iterate) and
one forward (the crossing check); the projections are vectorised over the batch and
there is no host synchronisation inside the loop.

``fused_check=True`` (not in ALGORITHM.md; off by default) takes the crossing check
from the gradient pass at the new iterate instead of a separate forward. Where the
iterate did not cross, that pass is the one the next iteration would run anyway;
where it crossed, the iterate steps back towards x0 and the next projection uses
the hyperplane linearised at the crossing point (φ extrapolated along it to the
stepped-back point) instead of a fresh pass there. The best point's φ and ∇xφ are
kept from its crossing pass, so the final gradient pass goes too: ``iterations + 1``
forward+backward passes in all, against ``iterations`` forward+backward passes,
``iterations`` forwards and a final forward+backward.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dyart.methods.base import eval_mode

CORRECT_THRESHOLD = 1e-9  # φ(x) above this counts as correct (ALGORITHM.md §1)
NORMS = ("linf", "l2")


@dataclass
class BoundaryResult:
    """Outcome of :func:`find_boundary`; every field is indexed like the batch.

    Attributes:
        x_hat: closest boundary point found (x itself where none was found).
        correct: φ(x) > 1e-9 on the clean point (the search ran on these).
        found: a crossing of φ = 0 was found.
        kept: found and passed the optimality filter of ALGORITHM.md §4.
        margin: R = ‖x̂ − x‖ (inf where not found).
        grad: ∇x φ(x̂), computed once at the end.
        phi: φ(x̂).
    """

    x_hat: Tensor
    correct: Tensor
    found: Tensor
    kept: Tensor
    margin: Tensor
    grad: Tensor
    phi: Tensor


def soft_margin(logits: Tensor, y: Tensor, temperature: float) -> Tensor:
    """Soft margin φ = z_y − (1/β)·log Σ_{j≠y} exp(β·z_j) (ALGORITHM.md §1).

    Args:
        logits: ``[N, C]`` logits z.
        y: ``[N]`` int64 labels.
        temperature: β; as β grows φ tends to the hard margin z_y − max_{j≠y} z_j.

    Returns:
        ``[N]`` soft margins; the decision boundary is φ = 0.
    """
    true = logits.gather(1, y[:, None]).squeeze(1)
    is_true = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, y[:, None], True)
    others = (temperature * logits).masked_fill(is_true, -math.inf)
    return true - torch.logsumexp(others, dim=1) / temperature


def lp_norm(v: Tensor, norm: str) -> Tensor:
    """Per-row L-inf or L2 norm of a batch of flattened vectors ``[N, d]``."""
    return v.abs().amax(dim=1) if norm == "linf" else v.norm(dim=1)


def dual_norm(v: Tensor, norm: str) -> Tensor:
    """Per-row dual norm: L1 for the L-inf threat model, L2 for L2 (ALGORITHM.md §2)."""
    return v.abs().sum(dim=1) if norm == "linf" else v.norm(dim=1)


def project_box(x: Tensor, g: Tensor, r: Tensor, norm: str) -> Tensor:
    """Minimal-norm step d with ⟨g, d⟩ = r and x + d in [0,1]^d (FAB projection).

    Every row is solved at once. The optimum moves each coordinate along
    sign(r·g_j) by min(t, room_j) for L-inf or min(t·|g_j|, room_j) for L2, where
    room_j is the distance to the box face in that direction; t is the smallest
    value that reaches the hyperplane. The reach Σ_j min(t·a_j, b_j) is piecewise
    linear in t with breakpoints b_j/a_j, so we sort the breakpoints and locate t
    from cumulative sums. If the box cannot reach the hyperplane the step goes as
    far as the box allows (Croce & Hein, ICML 2020, §3.1).

    Args:
        x: ``[N, d]`` points inside the box.
        g: ``[N, d]`` hyperplane normals.
        r: ``[N]`` required change of ⟨g, ·⟩.
        norm: ``"linf"`` or ``"l2"``.

    Returns:
        ``[N, d]`` steps.
    """
    direction = torch.sign(g * r[:, None])
    room = torch.addcmul(torch.full_like(x, 0.5), direction, 0.5 - x)  # 1−x up, x down
    gabs = g.abs()
    if norm == "linf":
        slope, breaks = gabs, room
    else:
        slope = gabs * gabs
        breaks = torch.where(gabs > 0, room / gabs, torch.full_like(room, 1e30))
    t = _reach_step(breaks, slope, r.abs())
    move = t[:, None] if norm == "linf" else t[:, None] * gabs
    return direction * torch.minimum(move, room)


_SAME_SIZE_INT = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def _sort_rows(values: Tensor) -> tuple[Tensor, Tensor]:
    """Sort non-negative floats along dim 1 by their bit patterns.

    For non-negative IEEE floats the bit pattern read as an integer has the same
    order as the value, and integer sorts are about 1.6x faster on CPU; the sort is
    the largest cost of the projection.
    """
    keys, order = values.view(_SAME_SIZE_INT[values.dtype]).sort(dim=1)
    return keys.view(values.dtype), order


def _reach_step(breaks: Tensor, slope: Tensor, target: Tensor) -> Tensor:
    """Smallest t with Σ_j min(t·slope_j, breaks_j·slope_j) = target, per row.

    With the breakpoints sorted, at t = breaks_k the coordinates up to k are
    saturated: reach_k = C_k + breaks_k·(total − S_k), C and S the inclusive
    cumulative sums of cap = breaks·slope and of slope.
    """
    breaks = breaks.clamp_max(_upper_bound(breaks, slope, target)[:, None])
    breaks, order = _sort_rows(breaks)
    slope = slope.gather(1, order)
    cap = breaks * slope
    cap_sum, slope_sum = cap.cumsum(1), slope.cumsum(1)
    free = slope_sum[:, -1:] - slope_sum  # slope of the coordinates after k
    reach = torch.addcmul(cap_sum, breaks, free)  # nondecreasing along each row
    k = torch.searchsorted(reach, target[:, None]).clamp_max(breaks.shape[1] - 1)
    before = cap_sum.gather(1, k) - cap.gather(1, k)  # saturated before segment k
    growing = free.gather(1, k) + slope.gather(1, k)
    t = (target[:, None] - before) / growing.clamp_min(1e-30)
    reachable = reach[:, -1:] >= target[:, None]
    t = torch.where(reachable, t, breaks[:, -1:])  # unreachable: as far as the box goes
    return t.squeeze(1).clamp_min(0)


def _upper_bound(breaks: Tensor, slope: Tensor, target: Tensor) -> Tensor:
    """A t per row known to reach the target (inf if none of a few guesses does).

    Breakpoints above such a t can be clamped to it without changing the answer:
    the clamped coordinates stay unsaturated below it. The sort is the projection's
    largest cost and is several times faster on the resulting ties.
    """
    unsaturated = target / slope.sum(1).clamp_min(1e-30)  # t* ≥ this
    cap = breaks * slope
    bound = torch.full_like(unsaturated, math.inf)
    for factor in (32.0, 4.0):  # the smaller guess wins where both reach
        guess = factor * unsaturated
        reach = torch.minimum(slope * guess[:, None], cap).sum(1)
        bound = torch.where(reach >= target, guess, bound)
    return bound


@contextmanager
def search_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and parameters without grad for the search; restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with eval_mode(model):
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def phi_and_grad(
    model: nn.Module, x: Tensor, y: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """φ(x) and ∇x φ(x) from one forward and one backward pass."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        phi = soft_margin(model(x), y, temperature)
        (grad,) = torch.autograd.grad(phi.sum(), x)
    return phi.detach(), grad


def phi_only(model: nn.Module, x: Tensor, y: Tensor, temperature: float) -> Tensor:
    """φ(x) from one forward pass without autograd."""
    with torch.no_grad():
        return soft_margin(model(x), y, temperature)


@dataclass(frozen=True)
class SearchSettings:
    """Hyperparameters of the FAB-style search (ALGORITHM.md §3)."""

    norm: str
    iterations: int
    eps: float
    temperature: float
    restarts: int
    alpha_max: float
    eta: float
    beta_back: float
    fused_check: bool = False


def find_boundary(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: str = "linf",
    iterations: int = 20,
    eps: float = 8 / 255,
    temperature: float = 5.0,
    restarts: int = 1,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta_back: float = 0.9,
    fused_check: bool = False,
    logits: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> BoundaryResult:
    """Closest points of the soft boundary φ = 0 to the correct points (ALGORITHM.md §3-§4).

    Runs with the model in eval mode and its parameters not requiring grad (both
    restored afterwards). Each iteration costs one forward+backward and one forward;
    one more forward+backward at the end gives φ(x̂) and ∇xφ(x̂) for the filter of §4.
    With ``fused_check`` each iteration costs one forward+backward, plus one at the
    start of each restart, and the filter uses φ and ∇xφ from the best point's own
    crossing pass (module docstring).

    Args:
        model: maps images in [0,1] to logits.
        x: ``[N, C, H, W]`` clean images in [0,1].
        y: ``[N]`` int64 labels.
        norm: ``"linf"`` or ``"l2"``.
        iterations: FAB iterations per restart.
        eps: start radius eps_fab.
        temperature: β of φ.
        restarts: random restarts; the closest crossing over all restarts is kept.
        alpha_max: largest mixing weight towards the step from x0.
        eta: overshoot of the projection step.
        beta_back: backward step towards x0 after a crossing.
        fused_check: check crossings in the next gradient pass (module docstring).
        logits: the clean logits of ``x`` if the caller has them (saves one forward).
        generator: random generator for the start points.

    Returns:
        A :class:`BoundaryResult` indexed like the batch.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    cfg = SearchSettings(
        norm, iterations, eps, temperature, restarts, alpha_max, eta, beta_back, fused_check
    )
    with search_mode(model):
        if logits is None:
            with torch.no_grad():
                logits = model(x)
        correct = soft_margin(logits.detach(), y, temperature) > CORRECT_THRESHOLD
        rows = correct.nonzero().squeeze(1)  # host sync, once, before the loop
        x0, y0 = x[rows].detach(), y[rows]
        if fused_check:
            best_x, best, phi, grad = _fused_search(model, x0, y0, cfg, generator)
        else:
            best_x, best = _search(model, x0, y0, cfg, generator)
            if rows.numel():
                phi, grad = phi_and_grad(model, best_x, y0, temperature)  # final gradient pass
            else:
                phi, grad = best.clone(), best_x.clone()
    found = torch.isfinite(best)
    delta = (best_x - x0).flatten(1)
    kept = keep_mask(delta, grad.flatten(1), phi, found, norm)
    return _scatter(x, correct, rows, best_x, found, kept, best, grad, phi)


def _search(
    model: nn.Module, x0: Tensor, y0: Tensor, cfg: SearchSettings, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Best crossing point and its distance per row (inf where none), all restarts."""
    flat0 = x0.flatten(1)
    best = torch.full(flat0.shape[:1], math.inf, dtype=x0.dtype, device=x0.device)
    best_x = flat0.clone()
    if flat0.shape[0] == 0:
        return best_x.view_as(x0), best
    for _ in range(cfg.restarts):
        x1 = _start(flat0, best, cfg, generator)
        for _ in range(cfg.iterations):
            x1, best_x, best = _fab_step(model, flat0, y0, x1, best_x, best, cfg, x0.shape)
    return best_x.view_as(x0), best


def _fused_search(
    model: nn.Module, x0: Tensor, y0: Tensor, cfg: SearchSettings, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Like :func:`_search`, with each crossing checked by the next gradient pass.

    Returns the best point, its distance (inf where none), and φ and ∇xφ there, all
    from the pass that found the crossing.
    """
    shape = x0.shape
    flat0 = x0.flatten(1)
    best = torch.full(flat0.shape[:1], math.inf, dtype=x0.dtype, device=x0.device)
    best_x, best_g = flat0.clone(), torch.zeros_like(flat0)
    best_phi = torch.zeros_like(best)
    if flat0.shape[0] == 0:
        return best_x.view_as(x0), best, best_phi, best_g.view_as(x0)
    for _ in range(cfg.restarts):
        x1 = _start(flat0, best, cfg, generator)
        phi, g = phi_and_grad(model, x1.view(shape), y0, cfg.temperature)
        g = g.flatten(1)
        for _ in range(cfg.iterations):
            x1 = _fab_move(flat0, x1, phi, g, cfg)
            phi_new, g = phi_and_grad(model, x1.view(shape), y0, cfg.temperature)
            g = g.flatten(1)
            crossed = phi_new < 0
            offset = x1 - flat0
            dist = lp_norm(offset, cfg.norm)
            better = crossed & (dist < best)
            pick = better[:, None].to(x1.dtype)
            best_x = torch.lerp(best_x, x1, pick)
            best_g = torch.lerp(best_g, g, pick)
            best_phi = torch.where(better, phi_new, best_phi)
            best = torch.where(better, dist, best)
            back = torch.where(crossed, cfg.beta_back, 1.0).to(x1.dtype)[:, None]
            stepped = torch.addcmul(flat0, back, offset)
            phi = phi_new + (g * (stepped - x1)).sum(1)  # along the crossing's hyperplane
            x1 = stepped
    return best_x.view_as(x0), best, best_phi, best_g.view_as(x0)


def _start(flat0: Tensor, best: Tensor, cfg: SearchSettings, generator: torch.Generator | None):
    """x0 + ½·min(best, eps)·u/‖u‖, clipped to the box (step 1 of §3)."""
    if cfg.norm == "linf":
        u = torch.rand(flat0.shape, generator=generator, dtype=flat0.dtype, device=flat0.device)
        u = 2 * u - 1
    else:
        u = torch.randn(flat0.shape, generator=generator, dtype=flat0.dtype, device=flat0.device)
    u = u / lp_norm(u, cfg.norm).clamp_min(1e-12)[:, None]
    radius = 0.5 * best.clamp_max(cfg.eps)
    return (flat0 + radius[:, None] * u).clamp(0, 1)


def _fab_step(model, flat0, y0, x1, best_x, best, cfg: SearchSettings, shape):
    """One FAB iteration (steps 2a-2d of §3): one forward+backward, one forward.

    Batch-sized selections use arithmetic on [N, 1] factors rather than
    ``torch.where`` on [N, d] tensors, which is several times slower on CPU.
    """
    phi, g = phi_and_grad(model, x1.view(shape), y0, cfg.temperature)
    x1 = _fab_move(flat0, x1, phi, g.flatten(1), cfg)
    crossed = phi_only(model, x1.view(shape), y0, cfg.temperature) < 0
    offset = x1 - flat0
    dist = lp_norm(offset, cfg.norm)
    better = crossed & (dist < best)
    best_x = torch.lerp(best_x, x1, better[:, None].to(x1.dtype))
    best = torch.where(better, dist, best)
    back = torch.where(crossed, cfg.beta_back, 1.0).to(x1.dtype)[:, None]
    return torch.addcmul(flat0, back, offset), best_x, best


def _fab_move(flat0: Tensor, x1: Tensor, phi: Tensor, g: Tensor, cfg: SearchSettings) -> Tensor:
    """Steps 2b-2c of §3: project x1 and x0 onto the hyperplane, mix, overshoot, clip.

    The hyperplane is {z : ⟨g, z⟩ = ⟨g, x1⟩ − φ}, φ and g the value and gradient of φ
    linearised at x1.
    """
    r_from_x0 = (g * (x1 - flat0)).sum(1) - phi  # hyperplane seen from x0
    steps = project_box(
        torch.cat([x1, flat0]), torch.cat([g, g]), torch.cat([-phi, r_from_x0]), cfg.norm
    )
    d1, d2 = steps.chunk(2)
    a1, a2 = lp_norm(d1, cfg.norm), lp_norm(d2, cfg.norm)
    a = (a1 / (a1 + a2).clamp_min(1e-30)).clamp(0, cfg.alpha_max)[:, None]  # per point
    return torch.lerp(x1.add(d1, alpha=cfg.eta), flat0.add(d2, alpha=cfg.eta), a).clamp_(0, 1)


def keep_mask(delta: Tensor, grad: Tensor, phi: Tensor, found: Tensor, norm: str) -> Tensor:
    """The optimality filter of ALGORITHM.md §4 on flattened δ = x̂ − x0 and g = ∇xφ(x̂).

    Keeps a found point when −0.3 < φ(x̂) < 0 and, for L-inf, more than 90% of the
    coordinates at the maximum (|δ_j| > 0.8·R) have δ_j·g_j < −1e-7 and some
    coordinate off the maximum has |g_j| ≤ 0.1; for L2, cosine(δ, −g) > 0.9.

    Returns:
        ``[N]`` bool mask.
    """
    ok = found & (phi < 0) & (phi > -0.3)
    if norm == "l2":
        cosine = torch.nn.functional.cosine_similarity(delta, -grad, dim=1, eps=1e-12)
        return ok & (cosine > 0.9)
    radius = delta.abs().amax(dim=1, keepdim=True)
    at_max = delta.abs() > 0.8 * radius
    opposed = (at_max & (delta * grad < -1e-7)).sum(1) / at_max.sum(1).clamp_min(1)
    flat_elsewhere = (~at_max & (grad.abs() <= 0.1)).sum(1) > 0
    return ok & (opposed > 0.9) & flat_elsewhere


def _scatter(x, correct, rows, best_x, found, kept, best, grad, phi) -> BoundaryResult:
    """Results on the correct rows written back into batch-sized tensors."""
    n = x.shape[0]
    mask = torch.zeros(n, dtype=torch.bool, device=x.device)
    margin = torch.full((n,), math.inf, dtype=best.dtype, device=x.device)
    phi_full = torch.zeros(n, dtype=phi.dtype, device=x.device)
    return BoundaryResult(
        x_hat=x.detach().index_copy(0, rows, best_x),
        correct=correct,
        found=mask.index_copy(0, rows, found),
        kept=mask.index_copy(0, rows, kept),
        margin=margin.index_copy(0, rows, best),
        grad=torch.zeros_like(x).index_copy(0, rows, grad),
        phi=phi_full.index_copy(0, rows, phi),
    )
