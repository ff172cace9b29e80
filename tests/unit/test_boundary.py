"""The soft margin, the FAB-style boundary search and its keep filter (ALGORITHM.md §1-§4)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from dyart.attacks import pgd_attack
from dyart.methods import find_boundary, soft_margin
from dyart.methods.boundary import SearchSettings, _fab_step, keep_mask, project_box

pytestmark = pytest.mark.usefixtures("one_thread")


def linear_model(seed: int = 0, zero_pixels: int = 0) -> nn.Module:
    """A 2-class linear classifier on 1x8x8 images: φ = (w_y − w_o)·x + b, exactly linear."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    with torch.no_grad():
        model[1].weight[:, :zero_pixels] = 0
    return model


def points_at_margin(model: nn.Module, n: int, margin: float, norm: str, seed: int = 1):
    """Points around the middle of the box at a known distance ``margin`` from the boundary."""
    gen = torch.Generator().manual_seed(seed)
    x = 0.4 + 0.2 * torch.rand(n, 1, 8, 8, generator=gen)
    w, b = model[1].weight.detach(), model[1].bias.detach()
    dw, db = w[0] - w[1], b[0] - b[1]
    dual = dw.abs().sum() if norm == "linf" else dw.norm()
    unit = dw.sign() if norm == "linf" else dw / dw.norm()
    # move each x along the steepest direction so that φ = ±margin·dual, sign by class
    phi0 = x.flatten(1) @ dw + db
    target = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0) * margin * dual
    x = x + ((target - phi0) / (unit @ dw))[:, None, None, None] * unit.view(1, 1, 8, 8)
    y = (target < 0).long()
    return x.clamp(0, 1), y


def small_cnn(seed: int = 0, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, classes),
    )


def test_soft_margin_equals_definition_on_random_logits():
    torch.manual_seed(0)
    logits, y = torch.randn(7, 5), torch.randint(0, 5, (7,))
    for beta in (0.5, 5.0):
        expected = [
            logits[i, y[i]]
            - math.log(sum(math.exp(beta * logits[i, j]) for j in range(5) if j != y[i])) / beta
            for i in range(7)
        ]
        assert torch.allclose(soft_margin(logits, y, beta), torch.tensor(expected), atol=1e-5)


def test_soft_margin_tends_to_hard_margin_as_temperature_grows():
    torch.manual_seed(0)
    logits, y = torch.randn(7, 5), torch.randint(0, 5, (7,))
    others = logits.scatter(1, y[:, None], -math.inf).amax(1)
    hard = logits.gather(1, y[:, None]).squeeze(1) - others
    gaps = [(hard - soft_margin(logits, y, beta)).abs().max().item() for beta in (1, 10, 1000)]
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1e-2
    assert (soft_margin(logits, y, 5.0) <= hard + 1e-6).all()  # soft max ≥ hard max


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_reaches_hyperplane_inside_box_with_minimal_norm(norm):
    torch.manual_seed(0)
    x, g, r = torch.rand(6, 10), torch.randn(6, 10), 0.3 * torch.randn(6)
    d = project_box(x, g, r, norm)
    assert torch.allclose((g * d).sum(1), r, atol=1e-5)
    assert ((x + d) >= -1e-6).all() and ((x + d) <= 1 + 1e-6).all()
    # no random feasible step of the same kind is shorter
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    for _ in range(200):
        other = project_box(x, g + 0.3 * torch.randn(6, 10), r, norm)
        ok = ((g * other).sum(1) - r).abs() < 1e-4
        other_size = other.abs().amax(1) if norm == "linf" else other.norm(dim=1)
        assert (other_size[ok] >= size[ok] - 1e-5).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_search_distance_matches_analytic_distance_on_linear_model(norm):
    model = linear_model()
    margin = 0.01 if norm == "linf" else 0.05
    x, y = points_at_margin(model, 8, margin, norm)
    result = find_boundary(model, x, y, norm=norm, eps=2 * margin, iterations=40)
    assert result.found.all()
    assert torch.allclose(result.margin, torch.full((8,), margin), rtol=0.02)
    assert result.phi.abs().max() < 1e-2
    assert result.x_hat.min() >= 0 and result.x_hat.max() <= 1


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_search_points_lie_on_boundary_inside_box(norm):
    model = small_cnn()
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x).argmax(1)
    result = find_boundary(model, x, y, norm=norm, eps=0.1, iterations=20)
    assert result.correct.sum() >= 4
    assert result.found[result.correct].all()
    assert not result.found[~result.correct].any()
    assert result.phi[result.found].abs().max() < 0.05
    assert (result.phi[result.found] < 0).all()
    assert result.x_hat.min() >= 0 and result.x_hat.max() <= 1
    distance = (result.x_hat - x).flatten(1)
    distance = distance.abs().amax(1) if norm == "linf" else distance.norm(dim=1)
    assert torch.allclose(distance[result.found], result.margin[result.found])


def test_search_never_much_farther_than_pgd_adversarial_point():
    model = small_cnn(classes=2)
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model(x).argmax(1)
    result = find_boundary(model, x, y, eps=0.05, iterations=40, temperature=50.0)
    pgd_radius = torch.full((16,), math.inf)
    for eps in torch.linspace(0.004, 0.1, 25).tolist():
        adv = pgd_attack(model, x, y, eps=eps, step_size=eps / 4, steps=10, random_start=False)
        with torch.no_grad():
            fooled = model(adv).argmax(1) != y
        pgd_radius = torch.where(fooled & pgd_radius.isinf(), eps, pgd_radius)
    beaten = pgd_radius.isfinite()
    assert beaten.sum() >= 8
    assert result.found[beaten].all()
    assert (result.margin[beaten] <= 1.25 * pgd_radius[beaten]).all()


def test_search_restores_train_mode_and_requires_grad():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, 3))
    model.train()
    model[0].weight.requires_grad_(False)
    x = torch.rand(4, 1, 8, 8)
    find_boundary(model, x, torch.zeros(4, dtype=torch.long), iterations=2)
    assert model.training and model[1].training
    assert not model[0].weight.requires_grad and model[3].weight.requires_grad
    assert model[3].weight.grad is None


def test_search_runs_in_float64():
    model = small_cnn().double()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    result = find_boundary(model, x, y, iterations=5, eps=0.1)
    assert result.x_hat.dtype == torch.float64 and result.margin.dtype == torch.float64


def counted_small_cnn() -> tuple[nn.Module, Tensor, Tensor, dict[str, int]]:
    """A small CNN whose forward passes are counted, with or without input gradients,
    a batch and its clean logits (computed before counting starts)."""
    model = small_cnn()
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        logits = model(x)
    calls = {"grad": 0, "no_grad": 0}
    inner = model.forward

    def counted(inp):
        calls["grad" if inp.requires_grad else "no_grad"] += 1
        return inner(inp)

    model.forward = counted
    return model, x, logits, calls


def test_search_costs_one_forward_backward_and_one_forward_per_iteration():
    model, x, logits, calls = counted_small_cnn()
    result = find_boundary(model, x, logits.argmax(1), iterations=20, logits=logits)
    assert result.correct.any()
    assert calls == {"grad": 20 + 1, "no_grad": 20}  # + the final gradient pass
    calls.update(grad=0, no_grad=0)
    find_boundary(model, x, logits.argmax(1), iterations=20)
    assert calls == {"grad": 21, "no_grad": 21}  # + one forward to find the correct points


def test_fused_check_costs_one_forward_backward_per_iteration_and_no_final_pass():
    model, x, logits, calls = counted_small_cnn()
    result = find_boundary(
        model, x, logits.argmax(1), iterations=20, logits=logits, fused_check=True, restarts=2
    )
    assert result.correct.any()
    assert calls == {"grad": 2 * (20 + 1), "no_grad": 0}  # + the start pass of each restart


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fused_check_follows_the_same_path_on_a_linear_model(norm):
    """On an exactly linear φ the crossing point's hyperplane is the stepped-back point's,
    so the fused search visits the same points as the search of ALGORITHM.md §3."""
    model = linear_model(seed=6)
    x, y = points_at_margin(model, 8, 0.02, norm)
    model, x = model.double(), x.double()
    runs = []
    for fused in (False, True):
        gen = torch.Generator().manual_seed(7)
        runs.append(
            find_boundary(
                model, x, y, norm=norm, eps=0.04, iterations=15, fused_check=fused, generator=gen
            )
        )
    exact, fused = runs
    assert exact.found.all() and torch.equal(exact.found, fused.found)
    assert torch.allclose(exact.x_hat, fused.x_hat, atol=1e-9)
    assert torch.allclose(exact.margin, fused.margin, atol=1e-9)
    assert torch.allclose(exact.phi, fused.phi, atol=1e-9)
    assert torch.allclose(exact.grad, fused.grad, atol=1e-9)
    assert torch.equal(exact.kept, fused.kept)


def test_fused_check_keeps_the_best_points_own_value_and_gradient():
    model = small_cnn()
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x).argmax(1)
    result = find_boundary(model, x, y, eps=0.1, iterations=20, fused_check=True)
    assert result.found[result.correct].all() and result.correct.sum() >= 4
    rows = result.found
    xh = result.x_hat[rows].clone().requires_grad_(True)
    phi = soft_margin(model(xh), y[rows], 5.0)
    (grad,) = torch.autograd.grad(phi.sum(), xh)
    assert torch.allclose(result.phi[rows], phi.detach(), atol=1e-6)
    assert torch.allclose(result.grad[rows], grad, atol=1e-6)
    assert (result.phi[rows] < 0).all() and result.phi[rows].abs().max() < 0.05
    distance = (result.x_hat - x).flatten(1).abs().amax(1)
    assert torch.allclose(distance[rows], result.margin[rows])


def test_restarts_keep_closest_point():
    model = small_cnn()
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y = model(x).argmax(1)
    torch.manual_seed(0)
    one = find_boundary(model, x, y, iterations=5, eps=0.2)
    torch.manual_seed(0)
    three = find_boundary(model, x, y, iterations=5, eps=0.2, restarts=3)
    assert (three.margin <= one.margin).all()  # the first restart is the same run


def test_mixing_weight_is_per_point():
    """A batch gives each point the step it gets alone (the published `[0]` bug fails this)."""
    model = linear_model(seed=5)
    x0, y = points_at_margin(model, 2, 0.02, "linf")
    x1 = x0.flatten(1).clone()
    x1[0] += 0.3 * torch.sign(torch.randn(64, generator=torch.Generator().manual_seed(0)))
    x1[1] += 0.01
    x1 = x1.clamp(0, 1)
    cfg = SearchSettings("linf", 1, 0.1, 5.0, 1, 0.5, 1.05, 0.9)
    best, best_x = torch.full((2,), math.inf), x0.flatten(1).clone()
    model.eval()
    together = _fab_step(model, x0.flatten(1), y, x1, best_x, best, cfg, x0.shape)
    for i in range(2):
        alone = _fab_step(
            model, x0[i : i + 1].flatten(1), y[i : i + 1], x1[i : i + 1], best_x[i : i + 1],
            best[i : i + 1], cfg, x0[i : i + 1].shape,
        )  # fmt: skip
        for got, want in zip(together, alone, strict=True):
            assert torch.allclose(got[i : i + 1], want, atol=1e-6)


def _linear_point(optimal: bool):
    """δ and g for a linear φ with 16 ignored pixels, optimal or not, crossing by 1%."""
    model = linear_model(seed=6, zero_pixels=16)
    x, y = points_at_margin(model, 1, 0.02, "linf")
    g = (model[1].weight[0] - model[1].weight[1]).detach()[None] * (1 - 2 * y[:, None])
    phi0 = soft_margin(model(x), y, 5.0).detach()
    direction = -g.sign() if optimal else torch.randn(1, 64, generator=torch.Generator())
    direction = direction / direction.abs().amax()
    delta = direction * (1.01 * phi0 / -(g * direction).sum(1))[:, None]
    phi = soft_margin(model(x + delta.view_as(x)), y, 5.0).detach()
    return delta, g, phi


def test_filter_keeps_textbook_optimal_point():
    delta, g, phi = _linear_point(optimal=True)
    assert phi.item() < 0
    assert keep_mask(delta, g, phi, torch.tensor([True]), "linf").item()
    assert keep_mask(delta, g, phi, torch.tensor([True]), "l2").item() is False  # cos = ‖g‖₁/√d‖g‖₂


def test_filter_drops_non_optimal_point():
    delta, g, phi = _linear_point(optimal=False)
    found = torch.tensor([True])
    assert phi.item() < 0
    assert not keep_mask(delta, g, phi, found, "linf").item()
    assert not keep_mask(delta, g, phi, found, "l2").item()


def test_filter_drops_points_far_past_boundary_or_not_crossed():
    delta, g, phi = _linear_point(optimal=True)
    found = torch.tensor([True])
    assert not keep_mask(delta, g, torch.tensor([-0.5]), found, "linf").item()
    assert not keep_mask(delta, g, torch.tensor([0.01]), found, "linf").item()
    assert not keep_mask(delta, g, phi, torch.tensor([False]), "linf").item()


def test_filter_keeps_l2_optimal_point():
    delta, g, _ = _linear_point(optimal=True)
    delta_l2 = -g * (delta.abs().amax() / g.abs().max())
    assert keep_mask(delta_l2, g, torch.tensor([-0.01]), torch.tensor([True]), "l2").item()


def test_margin_gradient_matches_finite_difference():
    """∇θR = ∇θφ(x̂)/‖∇xφ(x̂)‖_* (ALGORITHM.md §2), checked by re-running the search."""
    torch.manual_seed(7)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    x = 0.4 + 0.2 * torch.rand(1, 1, 4, 4, dtype=torch.float64)
    y = model(x).argmax(1).detach()

    def margin():
        torch.manual_seed(0)
        res = find_boundary(model, x, y, norm="l2", eps=0.1, iterations=60, temperature=5.0)
        return res

    res = margin()
    assert res.found.all()
    phi = soft_margin(model(res.x_hat), y, 5.0).sum()
    grads = torch.autograd.grad(phi, list(model.parameters()))
    scale = res.grad.flatten(1).norm()
    predicted = [g / scale for g in grads]
    step = 1e-3
    with torch.no_grad():
        for p, g in zip(model.parameters(), predicted, strict=True):
            p.add_(step * g)
    moved = margin().margin
    expected = step * sum((g * g).sum() for g in predicted)
    assert torch.allclose(moved - res.margin, expected, rtol=0.05)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_step_is_the_smallest_that_reaches(norm):
    """t* solves Σ_j min(t·a_j, room_j·a_j) = |r|: slightly less t falls short."""
    torch.manual_seed(1)
    x = torch.rand(64, 50).round()  # many coordinates on the box faces
    x[:, :25] = torch.rand(64, 25)
    g, r = torch.randn(64, 50), 10.0 * torch.randn(64)
    d = project_box(x, g, r, norm)
    direction = torch.sign(g * r[:, None])
    room = torch.where(direction > 0, 1 - x, x)
    gabs = g.abs()
    t = d.abs().amax(1) if norm == "linf" else (d.abs() / gabs).amax(1)

    def reach(s):
        if norm == "linf":
            return (gabs * torch.minimum(s[:, None], room)).sum(1)
        return (gabs * torch.minimum(s[:, None] * gabs, room)).sum(1)

    full = reach(torch.full((64,), 1e9))
    reachable = full >= r.abs()
    assert reachable.sum() > 10 and (~reachable).sum() > 0
    assert torch.allclose(reach(t)[reachable], r.abs()[reachable], rtol=1e-4)
    assert (reach(0.999 * t)[reachable] < r.abs()[reachable]).all()
    assert torch.allclose(reach(t)[~reachable], full[~reachable], rtol=1e-5)  # box edge


def test_unknown_norm_raises():
    model = small_cnn()
    with pytest.raises(ValueError, match="norm must be one of linf, l2"):
        find_boundary(model, torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), norm="l1")
