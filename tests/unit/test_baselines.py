"""Each baseline's loss against its paper's definition, on fixed adversarial logits."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dyart.methods import get_method
from dyart.methods.clean import clean_loss
from dyart.methods.mart import mart_loss
from dyart.methods.pgd_at import pgd_at_loss
from dyart.methods.trades import trades_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def fixed_logits():
    torch.manual_seed(0)
    return torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 2, 1, 2])


def softmax_row(row: list[float]) -> list[float]:
    total = sum(math.exp(v) for v in row)
    return [math.exp(v) / total for v in row]


def ce_row(row: list[float], label: int, smoothing: float = 0.0) -> float:
    logp = [math.log(p) for p in softmax_row(row)]
    k = len(row)
    return -sum(((1 - smoothing) * (j == label) + smoothing / k) * logp[j] for j in range(k))


def test_clean_loss_is_cross_entropy_with_optional_smoothing():
    logits, _, y = fixed_logits()
    for smoothing in (0.0, 0.1):
        want = sum(ce_row(logits[i].tolist(), int(y[i]), smoothing) for i in range(4)) / 4
        assert clean_loss(logits, y, smoothing).item() == pytest.approx(want, rel=1e-5)


def test_pgd_at_loss_is_cross_entropy_on_adversarial_logits():
    _, adv, y = fixed_logits()
    want = sum(ce_row(adv[i].tolist(), int(y[i])) for i in range(4)) / 4
    assert pgd_at_loss(adv, y).item() == pytest.approx(want, rel=1e-5)


def kl_row(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def test_trades_loss_by_hand():
    logits, adv, y = fixed_logits()
    for smoothing in (0.0, 0.1):
        want = 0.0
        for i in range(4):
            p, q = softmax_row(logits[i].tolist()), softmax_row(adv[i].tolist())
            want += ce_row(logits[i].tolist(), int(y[i]), smoothing) + 6.0 * kl_row(p, q)
        got = trades_loss(logits, adv, y, beta=6.0, label_smoothing=smoothing)
        assert got.item() == pytest.approx(want / 4, rel=1e-5)


def test_mart_loss_by_hand():
    logits, adv, y = fixed_logits()
    want = 0.0
    for i in range(4):
        p, q, label = softmax_row(logits[i].tolist()), softmax_row(adv[i].tolist()), int(y[i])
        runner_up = max(q[j] for j in range(3) if j != label)
        boosted = -math.log(q[label]) - math.log(1.0001 - runner_up + 1e-12)
        want += boosted + 6.0 * kl_row(p, q) * (1.0000001 - p[label])
    assert mart_loss(logits, adv, y, beta=6.0).item() == pytest.approx(want / 4, rel=1e-5)


def test_trades_loss_grows_with_disagreement_and_is_ce_when_equal():
    logits, _, y = fixed_logits()
    same = trades_loss(logits, logits, y, beta=6.0)
    assert same.item() == pytest.approx(clean_loss(logits, y).item(), rel=1e-6)
    assert trades_loss(logits, logits.flip(1), y, beta=6.0) > same


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(192, 4)
    ).train()


@pytest.mark.parametrize("name", ["pgd_at", "trades", "mart"])
def test_attack_leaves_batch_norm_statistics_to_the_loss_passes(name):
    """BN is frozen during the attack: running stats move only by the train-mode forwards."""
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 4, (6,))
    model = bn_model()
    _, metrics = get_method(name, dataset="synthetic", steps=3)(model, x, y)
    passes = {"pgd_at": 1, "trades": 2, "mart": 2}[name]
    assert model[1].num_batches_tracked.item() == passes
    assert 0 <= metrics["robust_acc"].item() <= 1


def test_eps_ramp_scales_eps_and_step_size_with_progress():
    method = get_method("pgd_at", dataset="mnist10k", eps_ramp=0.5)
    assert method.hparams["eps"] == pytest.approx(0.3)
    for progress, scale in ((0.1, 0.2), (0.25, 0.5), (0.5, 1.0), (0.9, 1.0)):
        method.progress = progress
        eps, step = method.attack_radius()
        assert eps == pytest.approx(0.3 * scale)
        assert step == pytest.approx(0.075 * scale)
    plain = get_method("pgd_at", dataset="mnist10k")
    plain.progress = 0.01
    assert plain.attack_radius() == pytest.approx((0.3, 0.075))


@pytest.mark.parametrize("name", ["pgd_at", "trades", "mart"])
def test_a_ramped_step_is_the_step_at_the_smaller_eps(name):
    """Early in the warm-up the method trains exactly as at the scaled-down eps."""
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 4, (6,))
    losses = []
    for ramp, eps, progress in ((0.5, 0.2, 0.1), (0.0, 0.04, 1.0), (0.0, 0.2, 1.0)):
        model = bn_model()
        method = get_method(name, dataset="synthetic", eps=eps, step_size=eps / 4, eps_ramp=ramp)
        method.progress = progress
        torch.manual_seed(2)
        losses.append(method(model, x, y)[0].item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert losses[0] != pytest.approx(losses[2], rel=1e-3)
