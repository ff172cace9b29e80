"""The method contract, get_method, the DyART loss (ALGORITHM.md §5) and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dyart.errors import ConfigError, InputError
from dyart.methods import METHOD_CLASSES, find_boundary, get_method, soft_margin
from dyart.methods.base import eval_mode, modes_agree
from dyart.methods.dyart import dyart_loss, margin_weights

pytestmark = pytest.mark.usefixtures("one_thread")


SMALL = {"steps": 2}
METHOD_ARGS = {
    "clean": {},
    "dyart": {"iterations": 3},
    "pgd_at": SMALL,
    "trades": SMALL,
    "mart": SMALL,
}


def tiny_model(classes: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, classes),
    )
    return model.train()


def batch(n: int = 8, classes: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=gen), torch.randint(0, classes, (n,), generator=gen)


def test_get_method_fills_dataset_defaults():
    method = get_method("dyart", dataset="mnist10k", lam_robust=10.0)
    assert method.name == "dyart"
    assert method.hparams["lam_robust"] == 10.0
    assert method.hparams["eps_fab"] == pytest.approx(0.3)
    assert method.hparams["r0"] == pytest.approx(0.6)
    assert get_method("dyart").hparams["eps_fab"] == pytest.approx(8 / 255)
    assert get_method("pgd_at").hparams["step_size"] == pytest.approx(2 / 255)
    assert set(METHOD_CLASSES) == {"clean", "dyart", "pgd_at", "trades", "mart"}


def test_get_method_rejects_unknown_method():
    with pytest.raises(ConfigError, match="'fgsm' is not one of") as err:
        get_method("fgsm")
    assert err.value.field == "method"


def test_get_method_rejects_unknown_hyperparameter():
    with pytest.raises(ConfigError, match="no hyperparameter 'beta'") as err:
        get_method("pgd_at", beta=6.0)
    assert err.value.field == "hparams.beta"


def test_get_method_rejects_out_of_range_value():
    with pytest.raises(ConfigError, match="above the maximum") as err:
        get_method("dyart", r0=5.0)
    assert err.value.field == "hparams.r0"
    with pytest.raises(ConfigError, match="not one of"):
        get_method("dyart", norm="l1")


@pytest.mark.parametrize("name", sorted(METHOD_ARGS))
def test_every_method_returns_loss_and_device_metrics(name):
    model = tiny_model()
    x, y = batch()
    loss, metrics = get_method(name, dataset="synthetic", **METHOD_ARGS[name])(model, x, y)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())
    assert {"loss", "clean_acc"} <= set(metrics)
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in metrics.values())
    assert model.training
    if name != "clean":
        assert "robust_acc" in metrics


def test_dyart_reports_boundary_metrics():
    model = tiny_model()
    x, y = batch(16)
    with torch.no_grad():
        y = model(x).argmax(1)  # mostly correct points, so the search has work
    _, metrics = get_method("dyart", dataset="synthetic", iterations=10)(model, x, y)
    for key in ("frac_correct", "frac_found", "frac_kept", "margin_q10", "margin_q50"):
        assert key in metrics
    assert metrics["frac_correct"] >= metrics["frac_found"] >= metrics["frac_kept"]
    assert metrics["frac_found"] > 0


def test_dyart_loss_equals_formula_by_hand():
    torch.manual_seed(0)
    logits, y = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    phi_hat, weights = torch.tensor([-0.1, -0.02]), torch.tensor([0.5, 2.0])
    ce = -sum(
        logits[i, y[i]] - math.log(sum(math.exp(v) for v in logits[i].tolist())) for i in range(5)
    )
    expected = ce / 5 + 100.0 * (0.5 * 0.1 + 2.0 * 0.02) / 5  # divided by N, not by K
    assert dyart_loss(logits, y, phi_hat, weights, 100.0).item() == pytest.approx(expected.item())


def test_margin_weights_by_hand():
    margin = torch.tensor([0.01, 0.05, 0.2, math.inf])
    grad = torch.tensor([[1.0, -1.0], [0.5, 0.5], [2.0, 0.0], [1.0, 1.0]])
    kept = torch.tensor([True, True, True, False])
    got = margin_weights(margin, grad, kept, r0=0.1, alpha=3.0, norm="linf")
    want = [math.exp(-0.03) / 2, math.exp(-0.15) / 1, 0.0, 0.0]  # L1 dual; R ≥ r0 → 0
    assert got.tolist() == pytest.approx(want)
    got = margin_weights(margin, grad, kept, r0=0.1, alpha=0.0, norm="l2")
    want = [math.exp(-0.0001) / math.sqrt(2), math.exp(-0.0005) / math.sqrt(0.5), 0.0, 0.0]
    assert got.tolist() == pytest.approx(want)  # α raised to 0.01, L2 dual


def test_dyart_step_loss_matches_its_parts():
    """The step's loss is CE + λ/N·Σ_kept w·(−φ(x̂)) with x̂ and w from the search."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 4))
    x, _ = batch(8)
    with torch.no_grad():
        y = model(x).argmax(1)
    method = get_method("dyart", dataset="synthetic", iterations=5, temperature=50.0)
    torch.manual_seed(1)
    loss, metrics = method(model, x, y)
    h = method.hparams
    torch.manual_seed(1)
    found = find_boundary(
        model, x, y, iterations=5, eps=h["eps_fab"], temperature=50.0, logits=model(x).detach()
    )
    weights = margin_weights(
        found.margin, found.grad, found.kept, r0=h["r0"], alpha=3.0, norm="linf"
    )
    phi_hat = soft_margin(model(found.x_hat), y, 50.0)[found.kept]
    ce = F.cross_entropy(model(x), y)
    boundary = (weights[found.kept] * -phi_hat).sum() / 8
    assert metrics["frac_kept"].item() == found.kept.float().mean().item() > 0
    assert boundary > 0
    assert loss.item() == pytest.approx((ce + h["lam_robust"] * boundary).item(), rel=1e-5)


def test_batch_with_no_correct_point_has_zero_boundary_term():
    model = tiny_model()
    x, _ = batch(6)
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 4
    loss, metrics = get_method("dyart", dataset="synthetic", iterations=3)(model, x, wrong)
    loss.backward()
    model.eval()
    assert loss.item() == pytest.approx(F.cross_entropy(model(x), wrong).item(), rel=0.2)
    assert metrics["frac_correct"].item() == 0 and metrics["frac_kept"].item() == 0
    assert math.isnan(metrics["margin_q50"].item())
    assert all(p.grad is not None for p in model.parameters())


def test_freeze_bn_keeps_running_statistics_from_boundary_points():
    x, _ = batch(8)
    runs = {}
    for freeze in (False, True):
        model = tiny_model().eval()
        with torch.no_grad():
            y = model(x).argmax(1)
        model.train()
        clean_only = tiny_model()
        clean_only(x)  # the running mean after the clean forward alone
        torch.manual_seed(0)
        get_method("dyart", dataset="synthetic", iterations=5, freeze_bn=freeze)(model, x, y)
        runs[freeze] = torch.allclose(model[1].running_mean, clean_only[1].running_mean)
        assert model[1].training
    assert runs == {False: False, True: True}


def test_dyart_decides_correct_points_in_eval_mode():
    """With BatchNorm, the points searched are those correct as the search sees the model."""
    x, _ = batch(16)
    model = tiny_model()
    with torch.no_grad():
        model[1].running_mean.fill_(0.5)  # eval-mode logits far from the train-mode ones
        model[1].running_var.fill_(0.01)
        eval_pred = model.eval()(x).argmax(1)
    model.train()
    y = eval_pred.clone()
    y[8:] = (eval_pred[8:] + 1) % 4  # half correct in eval mode
    with torch.no_grad(), eval_mode(model):
        eval_frac = (soft_margin(model(x), y, 50.0) > 1e-9).float().mean().item()
    method = get_method("dyart", dataset="synthetic", iterations=3, temperature=50.0)
    _, metrics = method(model, x, y)
    with torch.no_grad():  # train mode: batch statistics, whatever the running ones
        train_frac = (soft_margin(model(x), y, 50.0) > 1e-9).float().mean().item()
    assert eval_frac > 0 and train_frac != eval_frac  # the two modes disagree here
    assert metrics["frac_correct"].item() == eval_frac


def test_modes_agree_only_without_running_statistics_or_dropout():
    assert modes_agree(nn.Sequential(nn.Conv2d(1, 2, 3), nn.GroupNorm(1, 2), nn.ReLU()))
    assert modes_agree(nn.BatchNorm1d(2, track_running_stats=False))
    assert not modes_agree(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    assert not modes_agree(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1)))


@pytest.mark.parametrize("name", sorted(METHOD_ARGS))
def test_labels_out_of_range_raise(name):
    x, y = batch()
    with pytest.raises(InputError, match=r"labels must be in \[0, 4\)"):
        get_method(name, dataset="synthetic", **METHOD_ARGS[name])(tiny_model(), x, y + 4)


@pytest.mark.parametrize("name", sorted(METHOD_ARGS))
def test_images_outside_unit_box_raise(name):
    x, y = batch()
    with pytest.raises(InputError, match=r"images must have values in \[0,1\]"):
        get_method(name, dataset="synthetic", **METHOD_ARGS[name])(tiny_model(), x * 255, y)


@pytest.mark.parametrize("name", sorted(METHOD_ARGS))
def test_model_in_eval_mode_raises(name):
    x, y = batch()
    with pytest.raises(InputError, match=r"call model.train\(\) before a training step"):
        get_method(name, dataset="synthetic")(tiny_model().eval(), x, y)


def test_malformed_batches_raise():
    method, model = get_method("clean"), tiny_model()
    x, y = batch()
    with pytest.raises(InputError, match="float tensor"):
        method(model, (x * 255).to(torch.uint8), y)
    with pytest.raises(InputError, match="NCHW"):
        method(model, x.flatten(1), y)
    with pytest.raises(InputError, match="labels must have shape"):
        method(model, x, y[:-1])
    with pytest.raises(InputError, match="int64"):
        method(model, x, y.float())
    with pytest.raises(InputError, match="values in"):
        method(model, x.masked_fill(x > 0.5, math.nan), y)
