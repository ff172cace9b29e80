"""The trainer end to end on a tiny model: stages, rows, checkpoints, callbacks, failures."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import dyart
from dyart import checkpoint
from dyart.callbacks import ROW_KEYS, Callback
from dyart.config import TrainConfig
from dyart.ema import EMA
from dyart.errors import CheckpointError, ConfigError, NonFiniteLossError
from dyart.methods import get_method
from dyart.methods.clean import Clean
from dyart.methods.pgd_at import PGDAT
from dyart.models import build_model
from dyart.schedule import build_optimizer
from dyart.train import Trainer, train_step

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(**changes) -> TrainConfig:
    spec = {
        "dataset": "synthetic",
        "architecture": "mlp",
        "method": "dyart",
        "epochs": 2,
        "burn_in_epochs": 1,
        "batch_size": 64,
        "schedule": "step",
        "val_size": 64,
        "val_pgd_steps": 2,
        "eval_eps": [0.1],
        "eval_preset": "fast",
        "eval_n": 50,
        "hparams": {"iterations": 2},
    }
    return TrainConfig.from_dict({**spec, **changes})


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_stage_start(self, stage, info):
        self.events.append(("stage", stage, info))

    def on_epoch_end(self, stage, epoch, row):
        self.events.append(("epoch", stage, epoch, row))

    def on_checkpoint(self, kind, path, stage, epoch):
        self.events.append(("checkpoint", kind, path, stage, epoch))

    def on_evaluation(self, result):
        self.events.append(("evaluation", result))

    def of(self, kind):
        return [e[1:] for e in self.events if e[0] == kind]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    recorder = Recorder()
    summary = Trainer(_config(), out, device="cpu", callbacks=[recorder]).run()
    return out, recorder, summary


def test_stages_run_in_order_with_one_row_per_epoch(finished):
    _, recorder, _ = finished
    assert [s for s, _ in recorder.of("stage")] == ["burn_in", "train", "evaluate"]
    rows = [(stage, epoch) for stage, epoch, _ in recorder.of("epoch")]
    assert rows == [("burn_in", 1), ("train", 1), ("train", 2)]
    for _, _, row in recorder.of("epoch"):
        assert tuple(row) == ROW_KEYS
        assert 0.0 <= row["val_clean_acc"] <= 1.0 and row["val_pgd_acc"] <= row["val_clean_acc"]
        assert math.isfinite(row["train_loss"]) and row["seconds"] > 0
    burn_row, train_row = recorder.of("epoch")[0][2], recorder.of("epoch")[1][2]
    assert burn_row["margin_q50"] is None  # clean training has no boundary statistics
    assert train_row["frac_correct"] is not None and train_row["train_robust_acc"] is not None


def test_checkpoints_are_announced_after_they_are_complete(finished):
    out, recorder, summary = finished
    kinds = [(kind, stage, epoch) for kind, _, stage, epoch in recorder.of("checkpoint")]
    assert kinds[0] == ("latest", "burn_in", 1) and ("burn_in", "burn_in", 1) in kinds
    assert ("final", "train", 2) in kinds and any(k[0] == "best" for k in kinds)
    for _, path, _, _ in recorder.of("checkpoint"):
        assert path.is_file() and path.with_suffix(".json").is_file()
    assert (out / "burn_in.pt").is_file() and (out / "state" / "latest.pt").is_file()
    assert set(summary["checkpoints"]) == {"burn_in", "latest", "best", "final"}
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["stage"] for line in lines] == ["burn_in", "train", "train"]


def test_evaluation_goes_to_results_and_the_best_card(finished):
    out, recorder, summary = finished
    (result,) = recorder.of("evaluation")
    result = result[0]
    assert result["checkpoint"] == "best" and result["n"] == 50
    assert result["leaderboard_grade"] is False  # fast preset, 50 images
    row = result["results"][0]
    assert row["eps"] == 0.1 and row["robust_acc"] <= row["clean_acc"]
    assert json.loads((out / "results.json").read_text()) == result == summary["evaluation"]
    card = json.loads((out / "model-best.json").read_text())
    assert card["autoattack"] == result
    assert card["method"] == "dyart" and card["hparams"]["iterations"] == 2
    assert card["build_model"]["name"] == "mlp" and card["normalization"]["inside_model"]
    assert card["config"] == _config().to_dict()
    assert set(card["versions"]) == {"dyart", "torch"}


def test_best_model_loads_and_matches_its_weights(finished):
    out, _, _ = finished
    model = dyart.load_model(out / "model-best.safetensors")
    saved = load_file(out / "model-best.safetensors")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name])


def test_a_second_run_finds_the_work_done(finished):
    out, _, summary = finished
    recorder = Recorder()
    again = Trainer(_config(), out, device="cpu", callbacks=[recorder]).run()
    assert recorder.events == [] and again == summary


def test_burn_in_reuse_gives_the_same_training(finished, tmp_path):
    out, _, _ = finished
    recorder = Recorder()
    Trainer(
        _config(), tmp_path, device="cpu", callbacks=[recorder], init_from=out / "burn_in.pt"
    ).run(("burn_in", "train"))
    assert [s for s, _ in recorder.of("stage")] == ["train"]  # no burn-in trained
    ours, theirs = (
        load_file(tmp_path / "model-final.safetensors"),
        load_file(out / "model-final.safetensors"),
    )
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_the_train_stage_alone_starts_from_init_from(finished, tmp_path):
    out, _, _ = finished
    Trainer(_config(), tmp_path, device="cpu", init_from=out / "burn_in.pt").run(("train",))
    ours, theirs = (
        load_file(tmp_path / "model-final.safetensors"),
        load_file(out / "model-final.safetensors"),
    )
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_the_train_stage_without_its_burn_in_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"burn_in_epochs=1\) and .*burn_in.pt does not exist"):
        Trainer(_config(), tmp_path, device="cpu").run(("train",))
    assert not (tmp_path / "model-final.safetensors").exists()


def test_burn_in_reuse_refuses_another_architecture(finished, tmp_path):
    out, _, _ = finished
    other = _config(architecture="small_cnn")
    with pytest.raises(CheckpointError, match="architecture='mlp'"):
        Trainer(other, tmp_path, device="cpu", init_from=out / "burn_in.pt").run(("burn_in",))


def test_non_finite_loss_stops_and_keeps_the_last_good_state(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = Clean.step

    def poisoned(self, model, x, y):  # fault injection: the loss becomes inf in epoch 2
        loss, metrics = original(self, model, x, y)
        calls["n"] += 1
        return (loss * math.inf if calls["n"] > 5 else loss), metrics

    monkeypatch.setattr(Clean, "step", poisoned)
    config = _config(burn_in_epochs=3)
    with pytest.raises(NonFiniteLossError, match=r"burn_in loss became non-finite.*step 6"):
        Trainer(config, tmp_path, device="cpu").run()
    state = torch.load(tmp_path / "state" / "latest.pt", weights_only=True)
    assert (state["run"]["name"], state["run"]["epoch"]) == ("burn_in", 1)
    assert all(torch.isfinite(t).all() for t in state["run"]["model"].values())
    card = json.loads((tmp_path / "model-latest.json").read_text())
    assert card["epoch"] == 1


def test_a_step_that_spoils_the_weights_with_a_finite_loss_is_never_saved(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = Clean.step

    class InfGradient(torch.autograd.Function):  # fault injection: a finite loss, inf grads
        @staticmethod
        def forward(ctx, w):
            return torch.zeros_like(w)

        @staticmethod
        def backward(ctx, g):
            return torch.full_like(g, math.inf)

    def poisoned(self, model, x, y):  # the last step of burn-in epoch 2 (320 images / 64)
        loss, metrics = original(self, model, x, y)
        calls["n"] += 1
        if calls["n"] == 10:
            loss = loss + InfGradient.apply(next(model.parameters()).flatten()[0])
        return loss, metrics

    monkeypatch.setattr(Clean, "step", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"burn_in weights became non-finite.*epoch 2"):
        Trainer(_config(burn_in_epochs=3), tmp_path, device="cpu").run()
    state = torch.load(tmp_path / "state" / "latest.pt", weights_only=True)
    assert (state["run"]["name"], state["run"]["epoch"]) == ("burn_in", 1)
    for weights in (state["run"]["model"], state["run"]["ema"]["module"]):
        assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


def test_generated_data_missing_on_disk_stops_the_run_before_any_epoch(tmp_path):
    config = _config()
    config.extra_data_frac = 0.5  # as a config validated on a machine that had the file
    recorder = Recorder()
    trainer = Trainer(
        config, tmp_path / "run", device="cpu", data_dir=tmp_path, callbacks=[recorder]
    )
    with pytest.raises(ConfigError, match=r"extra_data_frac: 0.5 asks for generated data.*synth"):
        trainer.run()
    assert recorder.events == []


def test_a_run_left_with_its_evaluation_needs_no_generated_data(tmp_path):
    import numpy as np

    data_dir = tmp_path / "data"
    (data_dir / "generated").mkdir(parents=True)
    generated = data_dir / "generated" / "synthetic.npz"
    images = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)
    np.savez(generated, image=images, label=np.arange(40) % 4)
    config = _config(epochs=1, extra_data_frac=0.25)
    out = tmp_path / "run"
    Trainer(config, out, device="cpu", data_dir=data_dir).run(("burn_in", "train"))
    generated.unlink()  # moved away once the training stages were done
    summary = Trainer(config, out, device="cpu", data_dir=data_dir).run()
    assert summary["evaluation"]["checkpoint"] == "best"


def test_a_state_or_burn_in_made_on_another_split_of_the_dataset_is_not_continued(tmp_path):
    from dyart import checkpoint

    config = _config(epochs=1)
    out = tmp_path / "run"
    Trainer(config, out, device="cpu").run(("burn_in",))
    for path in (out / "state" / "latest.pt", out / "burn_in.pt"):
        state = checkpoint.load_training_state(path)
        assert state["data_split"] == config.dataset_card.split
        state["data_split"] = config.dataset_card.split + 1  # made by another version
        checkpoint.save_training_state(path, state)
    with pytest.raises(CheckpointError, match=r"version 2 of synthetic's train/validation"):
        Trainer(config, out, device="cpu").run()
    other = Trainer(config, tmp_path / "other", device="cpu", init_from=out / "burn_in.pt")
    with pytest.raises(CheckpointError, match=r"burn_in.pt was made on version 2"):
        other.run()


def test_an_evaluation_is_run_again_once_a_later_stage_replaces_its_model(tmp_path):
    config = _config(epochs=1)
    first = Trainer(config, tmp_path, device="cpu").run(("burn_in", "evaluate"))
    assert first["evaluation"]["checkpoint"] == "burn_in"
    stale = tmp_path / "state" / "autoattack" / "eps_0.1" / "progress.json"
    assert stale.is_file()
    summary = Trainer(config, tmp_path, device="cpu").run()
    assert summary["evaluation"]["checkpoint"] == "best"
    best = dyart.load_model(tmp_path / "model-best.safetensors")
    data = Trainer(config, tmp_path / "x", device="cpu")._load_data()
    n = summary["evaluation"]["n"]
    clean = (best(data.test_x[:n].float() / 255).argmax(1) == data.test_y[:n]).float().mean()
    assert summary["evaluation"]["results"][0]["clean_acc"] == pytest.approx(clean.item())


def test_unknown_stage_and_oversized_batch_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="stages"):
        Trainer(_config(), tmp_path, device="cpu").run(("burn_in", "polish"))
    with pytest.raises(ConfigError, match="batch_size"):
        Trainer(_config(batch_size=4096), tmp_path, device="cpu").run()


def test_the_trainer_tells_the_method_its_progress_for_the_eps_warm_up(tmp_path, monkeypatch):
    seen = []
    original = PGDAT.step

    def spy(self, model, x, y):  # records what the trainer set before each step
        seen.append((self.progress, self.attack_radius()[0]))
        return original(self, model, x, y)

    monkeypatch.setattr(PGDAT, "step", spy)
    config = _config(
        method="pgd_at", burn_in_epochs=0, eval_eps=[], hparams={"eps_ramp": 0.5, "steps": 1}
    )
    Trainer(config, tmp_path, device="cpu").run()
    steps = len(seen)
    assert steps > 4
    assert [p for p, _ in seen] == pytest.approx([(i + 1) / steps for i in range(steps)])
    eps = [e for _, e in seen]
    assert eps == sorted(eps) and eps[0] < 0.5 * eps[-1]
    assert eps[steps // 2 :] == pytest.approx([eps[-1]] * (steps - steps // 2))


def test_a_fresh_start_refuses_a_folder_with_an_earlier_runs_outputs(finished, tmp_path):
    out, _, _ = finished
    for name in ("metrics.jsonl", "results.json", "model-best.safetensors", "burn_in.pt"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / name).write_bytes((out / name).read_bytes())
        with pytest.raises(ConfigError, match=rf"out: {folder} holds an earlier run's outputs "
                                              rf"\({name}\).*give a new out folder"):  # fmt: skip
            Trainer(_config(lr=0.05), folder, device="cpu").run()
        assert sorted(p.name for p in folder.iterdir()) == [name]  # nothing trained or added


def test_a_lone_burn_in_copy_is_replaced_when_init_from_is_given(finished, tmp_path):
    """A worker killed while copying the reused burn-in leaves burn_in.pt and no state."""
    out, _, _ = finished
    (tmp_path / "burn_in.pt").write_bytes(b"left by an adoption cut short")
    Trainer(_config(), tmp_path, device="cpu", init_from=out / "burn_in.pt").run(("train",))
    assert (tmp_path / "burn_in.pt").read_bytes() == (out / "burn_in.pt").read_bytes()
    ours, theirs = (
        load_file(tmp_path / "model-final.safetensors"),
        load_file(out / "model-final.safetensors"),
    )
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_burn_in_reuse_refuses_a_burn_in_trained_on_our_validation_images(finished, tmp_path):
    out, _, _ = finished  # its burn-in held out 64 images
    more = _config(val_size=128)
    with pytest.raises(CheckpointError, match="would validate on images it trained on"):
        Trainer(more, tmp_path, device="cpu", init_from=out / "burn_in.pt").run(("burn_in",))
    assert not (tmp_path / "burn_in.pt").exists()


def test_the_model_card_names_the_reused_burn_in_and_its_settings(finished, tmp_path):
    from dyart.files import file_sha256

    out, _, _ = finished
    source = out / "burn_in.pt"
    config = _config(burn_in_epochs=3, burn_in_lr=0.05, epochs=1)  # settings it did not use
    trainer = Trainer(config, tmp_path / "run", device="cpu", init_from=str(source))
    trainer.run(("burn_in",))
    Trainer(config, tmp_path / "run", device="cpu").run(("train",))  # resumed, no init_from
    card = json.loads((tmp_path / "run" / "model-final.json").read_text())
    assert card["init_from"]["path"] == str(source)
    assert card["init_from"]["sha256"] == file_sha256(source)
    assert card["init_from"]["burn_in_key"] == _config().burn_in_key()
    assert (card["config"]["burn_in_epochs"], card["config"]["burn_in_lr"]) == (1, 0.1)


def test_the_console_says_where_a_run_resumes_and_when_it_is_complete(tmp_path, caplog):
    import logging

    from dyart.callbacks import ConsoleCallback, StopAfter
    from dyart.errors import StopRequested

    config = _config(epochs=3, eval_eps=[])
    with pytest.raises(StopRequested):
        Trainer(config, tmp_path, device="cpu", callbacks=[StopAfter("train", 1)]).run()
    caplog.set_level(logging.INFO, logger="dyart")
    Trainer(config, tmp_path, device="cpu", callbacks=[ConsoleCallback()]).run()
    lines = [r.getMessage() for r in caplog.records]
    state = tmp_path / "state" / "latest.pt"
    resumed = [line for line in lines if line.startswith("resuming train")]
    assert len(resumed) == 1 and resumed[0].startswith("resuming train at epoch 2 of 3, after step")
    assert resumed[0].endswith(f"from {state}")
    assert not any(line.startswith("train: 3 epochs") for line in lines)
    caplog.clear()
    Trainer(config, tmp_path, device="cpu", callbacks=[ConsoleCallback()]).run()
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path}: the run is already complete (burn_in, train, evaluate done); nothing to do"
    ]


DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_a_step_runs_every_pass_of_the_method_in_its_precision(precision, dtype, device):
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, in_channels=1, image_size=8).to(device)
    seen = []
    model.get_submodule(_first_linear(model)).register_forward_hook(
        lambda _m, _i, out: seen.append(out.dtype)
    )
    method = get_method("dyart", dataset="synthetic", iterations=2)
    optimizer = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=5e-4)
    ema = EMA(model, decay=0.9, total_steps=10)
    x = torch.rand(32, 1, 8, 8, device=device)
    with torch.no_grad():
        model.net[-1].weight.mul_(50)  # clear margins: every point correct for the search
        y = model(x).argmax(1)
    seen.clear()
    before = [p.detach().clone() for p in model.parameters()]
    loss, metrics = train_step(
        model, method, optimizer, ema, x, y, grad_clip=1.0, precision=precision
    )

    assert len(seen) > 3 and set(seen) == {dtype}  # the search's passes and the loss's
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert metrics["frac_correct"].item() > 0.5  # the search ran on most points
    for new in model.parameters():
        assert new.dtype == torch.float32  # the weights stay fp32; only the arithmetic changes
    assert any(not torch.equal(o, n) for o, n in zip(before, model.parameters(), strict=True))


def _first_linear(model):
    return next(name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize("device", DEVICES)
def test_a_bf16_run_trains_in_bf16_validates_in_fp32_and_records_it(device, tmp_path, monkeypatch):
    import dyart.train as train_module

    precisions, validated_under_autocast = [], []
    real_step, real_validate = train_module.train_step, Trainer._validate

    def recording_step(*args, **kwargs):
        precisions.append(kwargs["precision"])
        return real_step(*args, **kwargs)

    def recording_validate(self, model, epoch):
        validated_under_autocast.append(torch.is_autocast_enabled(device))
        return real_validate(self, model, epoch)

    monkeypatch.setattr(train_module, "train_step", recording_step)
    monkeypatch.setattr(Trainer, "_validate", recording_validate)
    outs = {}
    for precision in ("fp32", "bf16"):
        precisions.clear()
        recorder = Recorder()
        config = _config(epochs=1, eval_eps=[], precision=precision)
        Trainer(config, tmp_path / precision, device=device, callbacks=[recorder]).run()
        assert set(precisions) == {precision} and len(precisions) >= 2  # burn-in and train
        assert validated_under_autocast and not any(validated_under_autocast)
        rows = [row for _, _, row in recorder.of("epoch")]
        assert all(math.isfinite(r["train_loss"]) and r["val_clean_acc"] is not None for r in rows)
        card = json.loads((tmp_path / precision / "model-best.json").read_text())
        assert card["config"]["precision"] == precision
        outs[precision] = load_file(tmp_path / precision / "model-best.safetensors")
    assert outs["fp32"].keys() == outs["bf16"].keys()
    assert any(not torch.equal(outs["fp32"][k], outs["bf16"][k]) for k in outs["fp32"])
    assert all(t.dtype == torch.float32 for t in outs["bf16"].values() if t.is_floating_point())


def test_precision_is_part_of_the_burn_in_key_and_checked():
    assert _config().burn_in_key()["precision"] == "fp32"
    assert _config(precision="bf16").burn_in_key() != _config().burn_in_key()
    with pytest.raises(ConfigError, match=r"precision.*fp16.*fp32, bf16"):
        _config(precision="fp16")


def test_a_state_saved_before_a_setting_existed_resumes_with_its_default(tmp_path):
    config = _config(epochs=1, eval_eps=[])
    Trainer(config, tmp_path, device="cpu").run(("burn_in",))
    latest = tmp_path / "state" / "latest.pt"
    state = checkpoint.load_training_state(latest)
    older = json.loads(state["config"])
    del older["precision"]  # as a run saved before precision existed
    state["config"] = json.dumps(older)
    checkpoint.save_training_state(latest, state)

    recorder = Recorder()
    Trainer(config, tmp_path, device="cpu", callbacks=[recorder]).run(("burn_in", "train"))
    assert [stage for stage, _, _ in recorder.of("epoch")] == ["train"]

    state["config"] = json.dumps({**older, "precision": "bf16"})
    checkpoint.save_training_state(latest, state)
    with pytest.raises(CheckpointError, match=r"different config \(fields precision\)"):
        Trainer(config, tmp_path, device="cpu").run(("burn_in", "train"))
