"""Optimizer groups, the learning-rate schedules of the recipe, and the EMA formula."""

import math

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR

from dyart.ema import EMA, ema_decay
from dyart.errors import ConfigError
from dyart.schedule import Schedule, build_optimizer, param_groups


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.GroupNorm(2, 4),
        nn.Flatten(),
        nn.Linear(4, 3),
        nn.LayerNorm(3),
        nn.Linear(3, 2, bias=False),
    )


def _lrs_per_epoch(name: str, epochs: int, steps: int = 3, **kw):
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = Schedule(opt, name, epochs=epochs, steps_per_epoch=steps, lr=0.1, **kw)
    lrs, moms = [], []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["momentum"])
        for _ in range(steps):
            opt.step()
            sched.step_batch()
        sched.step_epoch()
    return lrs, moms


def test_weight_decay_groups_exclude_norm_layers_and_biases():
    net = _net()
    decay, no_decay = param_groups(net, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    decayed = {id(p) for p in decay["params"]}
    assert decayed == {id(net[0].weight), id(net[4].weight), id(net[6].weight)}
    undecayed = {id(p) for p in no_decay["params"]}
    expected = [net[0].bias, net[1].weight, net[1].bias, net[2].weight, net[2].bias]
    expected += [net[4].bias, net[5].weight, net[5].bias]
    assert undecayed == {id(p) for p in expected}


def test_optimizer_is_nesterov_sgd():
    opt = build_optimizer(_net(), lr=0.2, momentum=0.9, weight_decay=1e-4)
    assert isinstance(opt, torch.optim.SGD)
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in opt.param_groups)


def test_onecycle_lr_per_epoch_matches_torch_definition():
    epochs = 200
    lrs, moms = _lrs_per_epoch("onecycle", epochs)
    ref_opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.9)
    ref = OneCycleLR(
        ref_opt,
        max_lr=0.1,
        total_steps=epochs,
        pct_start=0.025,
        div_factor=25,
        final_div_factor=1e4,
        base_momentum=0.85,
        max_momentum=0.95,
    )
    expected = []
    for _ in range(epochs):
        expected.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    assert lrs == pytest.approx(expected, rel=1e-12)
    # the definition: lr/25 at the start, the peak after 2.5% of the epochs, lr/25/1e4 at the end
    assert lrs[0] == pytest.approx(0.1 / 25)
    assert max(lrs) == pytest.approx(0.1) and lrs.index(max(lrs)) == 4
    assert lrs[-1] == pytest.approx(0.1 / 25 / 1e4)
    # momentum cycles against the lr: 0.95 -> 0.85 (at the peak) -> 0.95
    assert moms[0] == pytest.approx(0.95) and moms[4] == pytest.approx(0.85)
    assert moms[-1] == pytest.approx(0.95)


def test_onecycle_survives_a_warmup_ending_exactly_on_an_epoch():
    lrs, _ = _lrs_per_epoch("onecycle", 40)  # torch's own OneCycleLR divides by zero here
    assert lrs[0] == pytest.approx(0.1 / 25)
    low = 0.1 / 25 / 1e4  # epoch 1 is the first step of the cosine decay over 39 epochs
    assert lrs[1] == pytest.approx(low + (0.1 - low) * (1 + math.cos(math.pi / 39)) / 2)
    assert all(math.isfinite(v) for v in lrs)


def test_step_schedule_divides_by_ten_at_half_and_three_quarters():
    lrs, _ = _lrs_per_epoch("step", 8)
    assert lrs == pytest.approx([0.1] * 4 + [0.01] * 2 + [0.001] * 2)


def test_step_schedule_planned_for_twice_the_epochs_stays_at_the_peak():
    # the burn-in: planned for 2 x 5 epochs, used for 5
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=0.0)
    sched = Schedule(opt, "step", epochs=10, steps_per_epoch=1, lr=0.1)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step_epoch()
    assert seen == [0.1] * 5


def test_cosine_warms_up_linearly_per_step_then_decays_to_zero():
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=0.0)
    sched = Schedule(opt, "cosine", epochs=10, steps_per_epoch=10, lr=0.1, warmup_frac=0.1)
    seen = []
    for _ in range(100):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step_batch()
        sched.step_epoch()  # a no-op for the per-step schedule
    assert seen[:10] == pytest.approx([0.01 * (i + 1) for i in range(10)])
    assert seen[10] == pytest.approx(0.1)
    assert seen[55] == pytest.approx(0.05 * (1 + math.cos(math.pi * 45 / 90)))
    assert seen[-1] < 1e-3 and all(a >= b for a, b in zip(seen[10:], seen[11:], strict=False))


def test_constant_schedule_and_unknown_name():
    lrs, _ = _lrs_per_epoch("constant", 4)
    assert lrs == [0.1] * 4
    with pytest.raises(ConfigError, match="schedule"):
        _lrs_per_epoch("linear", 4)


def test_schedule_state_round_trips():
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=0.0)
    sched = Schedule(opt, "onecycle", epochs=10, steps_per_epoch=1, lr=0.1)
    for _ in range(3):
        opt.step()
        sched.step_epoch()
    opt2 = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=0.0)
    sched2 = Schedule(opt2, "onecycle", epochs=10, steps_per_epoch=1, lr=0.1)
    sched2.load_state_dict(sched.state_dict())
    opt2.load_state_dict(opt.state_dict())
    for _ in range(3):
        opt.step(), opt2.step()
        sched.step_epoch(), sched2.step_epoch()
        assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]


def test_ema_decay_formula_after_warmup():
    assert ema_decay(0, decay=0.995, warmup_steps=5) == 0.0
    assert ema_decay(4, decay=0.995, warmup_steps=5) == 0.0
    assert ema_decay(5, decay=0.995, warmup_steps=5) == pytest.approx(1 / 10)
    assert ema_decay(15, decay=0.995, warmup_steps=5) == pytest.approx(11 / 20)
    assert ema_decay(10_000, decay=0.995, warmup_steps=5) == 0.995


def test_ema_copies_during_warmup_then_mixes():
    live = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = EMA(live, decay=0.995, total_steps=80)  # warm-up: 2 steps
    assert ema.warmup_steps == 2
    history = []
    for _ in range(4):
        with torch.no_grad():
            for p in live.parameters():
                p.add_(1.0)
        history.append([p.detach().clone() for p in live.parameters()])
        ema.update(live)
        if ema.steps <= 2:
            pairs = zip(ema.module.parameters(), history[-1], strict=True)
            assert all(torch.equal(e, h) for e, h in pairs)
    # step 3 (t=0): d = 1/10; step 4 (t=1): d = 2/11
    expected = list(history[1])
    for d, hist in ((1 / 10, history[2]), (2 / 11, history[3])):
        expected = [d * e + (1 - d) * h for e, h in zip(expected, hist, strict=True)]
    for e, p in zip(expected, ema.module.parameters(), strict=True):
        torch.testing.assert_close(p, e)


def test_ema_buffers_are_copied_not_aliased():
    live = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = EMA(live, decay=0.995, total_steps=10)
    live.train()(torch.randn(8, 3))
    ema.copy_buffers(live)
    assert torch.equal(ema.module[1].running_mean, live[1].running_mean)
    assert ema.module[1].running_mean.data_ptr() != live[1].running_mean.data_ptr()
    live(torch.randn(8, 3))
    assert not torch.equal(ema.module[1].running_mean, live[1].running_mean)
