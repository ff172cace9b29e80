"""PGD (dyart.attacks): stays in the threat model, raises the loss, leaves the model alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dyart.attacks import attack_loss, pgd_attack

pytestmark = pytest.mark.usefixtures("one_thread")


def model_and_batch(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("start", [True, False, "normal"])
def test_pgd_stays_in_ball_and_box(norm, start):
    model, x, y = model_and_batch()
    adv = pgd_attack(model, x, y, eps=0.1, step_size=0.05, steps=5, norm=norm, random_start=start)
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= 0.1 + 1e-5).all()
    assert adv.min() >= 0 and adv.max() <= 1
    assert not adv.requires_grad


@pytest.mark.parametrize("loss", ["ce", "cw", "kl"])
def test_pgd_raises_its_loss(loss):
    model, x, y = model_and_batch()
    target = model(x).detach()
    adv = pgd_attack(model, x, y, eps=0.1, step_size=0.02, steps=10, loss=loss, random_start=False)
    with torch.no_grad():
        before = attack_loss(model(x + 1e-4 * torch.randn_like(x)), y, loss, target)
        after = attack_loss(model(adv), y, loss, target)
    assert after > before


def test_pgd_with_large_eps_fools_the_model():
    model, x, y = model_and_batch()
    adv = pgd_attack(model, x, y, eps=0.5, step_size=0.05, steps=20, loss="cw")
    with torch.no_grad():
        assert (model(adv).argmax(1) != y).float().mean() > 0.5


def test_pgd_leaves_parameter_grads_and_mode_alone():
    model, x, y = model_and_batch()
    model.train()
    pgd_attack(model, x, y, eps=0.1, step_size=0.02, steps=3)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_pgd_start_follows_generator():
    model, x, y = model_and_batch()
    runs = [
        pgd_attack(model, x, y, eps=0.1, step_size=0.02, steps=1,
                   generator=torch.Generator().manual_seed(3))
        for _ in range(2)
    ]  # fmt: skip
    assert torch.equal(runs[0], runs[1])


def test_pgd_works_without_grad_enabled_and_in_float64():
    model, x, y = model_and_batch()
    model.double()
    with torch.no_grad():
        adv = pgd_attack(model, x.double(), y, eps=0.1, step_size=0.02, steps=2)
    assert adv.dtype == torch.float64 and (adv != x.double()).any()


def test_unknown_attack_loss_raises():
    model, x, y = model_and_batch()
    with pytest.raises(ValueError, match="attack loss must be one of"):
        pgd_attack(model, x, y, eps=0.1, step_size=0.02, steps=1, loss="hinge")
