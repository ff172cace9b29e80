"""Exact resume: a run stopped and resumed ends bit-identical to an uninterrupted one."""

import json
import logging
import os
import shutil

import pytest
import torch

from dyart import checkpoint
from dyart.callbacks import Callback, StopAfter
from dyart.config import TrainConfig
from dyart.errors import CheckpointError, StopRequested
from dyart.train import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


STAGES = ("burn_in", "train")


def _config(**changes) -> TrainConfig:
    spec = {
        "dataset": "synthetic",
        "architecture": "small_cnn",
        "method": "dyart",
        "epochs": 2,
        "burn_in_epochs": 2,
        "batch_size": 64,
        "schedule": "cosine",
        "grad_clip": 1.0,
        "val_size": 64,
        "val_pgd_steps": 2,
        "eval_eps": [],
        "hparams": {"iterations": 2},
    }
    return TrainConfig.from_dict({**spec, **changes})


class StopAtStep(Callback):
    """Asks to stop once ``step`` optimizer steps of ``stage`` are done (mid-epoch)."""

    def __init__(self, stage: str, step: int):
        self.stage, self.step, self.seen = stage, step, 0
        self.current = None

    def on_stage_start(self, stage, info):
        self.current = stage

    def on_step(self, stage, epoch, step, metrics):
        pass

    def should_stop(self) -> bool:
        if self.current == self.stage:
            self.seen += 1
        return self.seen == self.step


def _final_state(out_dir, stops=()) -> dict:
    """Run to the end of the train stage, stopping there so the full state is saved."""
    config = _config()
    for stop in stops:
        with pytest.raises(StopRequested):
            Trainer(config, out_dir, device="cpu", callbacks=[stop]).run(STAGES)
    end = StopAfter("train", config.epochs)
    with pytest.raises(StopRequested):
        Trainer(config, out_dir, device="cpu", callbacks=[end]).run(STAGES)
    return torch.load(out_dir / "state" / "latest.pt", weights_only=True)


def _assert_identical(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_identical(x, y, f"{where}[{i}]")
    elif where.endswith(".seconds"):
        pass  # wall-clock time differs
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return _final_state(tmp_path_factory.mktemp("straight"))


def test_resume_at_epoch_boundaries_is_bit_identical(uninterrupted, tmp_path):
    stops = (StopAfter("burn_in", 1), StopAfter("train", 1))
    resumed = _final_state(tmp_path, stops)
    run_a, run_b = uninterrupted["run"], resumed["run"]
    for key in ("model", "ema", "optimizer", "schedule", "loader", "rng"):
        _assert_identical(run_a[key], run_b[key], key)
    assert (run_b["epoch"], run_b["step"]) == (run_a["epoch"], run_a["step"])


def test_resume_mid_epoch_is_bit_identical(uninterrupted, tmp_path):
    resumed = _final_state(tmp_path, (StopAtStep("burn_in", 1), StopAtStep("train", 2)))
    _assert_identical(uninterrupted["run"]["model"], resumed["run"]["model"], "model")
    _assert_identical(uninterrupted["run"]["ema"], resumed["run"]["ema"], "ema")
    _assert_identical(uninterrupted["run"]["optimizer"], resumed["run"]["optimizer"], "opt")


def test_stop_saves_the_position_then_raises(tmp_path):
    with pytest.raises(StopRequested, match="state saved"):
        Trainer(_config(), tmp_path, device="cpu", callbacks=[StopAtStep("burn_in", 2)]).run()
    state = torch.load(tmp_path / "state" / "latest.pt", weights_only=True)
    assert state["run"]["name"] == "burn_in"
    assert (state["run"]["epoch"], state["run"]["batch"], state["run"]["step"]) == (0, 2, 2)


def test_resume_refuses_a_different_config(tmp_path):
    with pytest.raises(StopRequested):
        Trainer(_config(), tmp_path, device="cpu", callbacks=[StopAtStep("burn_in", 1)]).run()
    with pytest.raises(CheckpointError, match="different config.*lr"):
        Trainer(_config(lr=0.05), tmp_path, device="cpu").run()


def test_a_state_saved_before_a_hyperparameter_existed_resumes_with_its_default(tmp_path):
    """An upgrade that adds a method setting must not strand the runs in flight."""
    with pytest.raises(StopRequested):
        Trainer(_config(), tmp_path, device="cpu", callbacks=[StopAtStep("burn_in", 1)]).run()
    path = tmp_path / "state" / "latest.pt"
    state = torch.load(path, weights_only=True)
    older = json.loads(state["config"])
    del older["hparams"]["fused_check"]  # as saved before the setting existed
    state["config"] = json.dumps(older)
    checkpoint.save_training_state(path, state)
    trainer = Trainer(_config(), tmp_path, device="cpu", callbacks=[StopAfter("burn_in", 1)])
    with pytest.raises(StopRequested):
        trainer.run(STAGES)
    assert trainer.resumed_from == path
    # the default is what the older run trained with; another value is another config
    state = torch.load(path, weights_only=True)
    state["config"] = json.dumps(older)
    checkpoint.save_training_state(path, state)
    changed = _config(hparams={"iterations": 2, "fused_check": True})
    with pytest.raises(CheckpointError, match="different config.*hparams"):
        Trainer(changed, tmp_path, device="cpu").run(STAGES)


CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
needs_two_cores = pytest.mark.skipif((CORES or 1) < 2, reason="needs two cores")


class RecordThreads(Callback):
    """Records the torch thread count each stage trains on."""

    def __init__(self):
        self.threads = {}

    def on_stage_start(self, stage, info):
        self.threads[stage] = torch.get_num_threads()
        self.info = info


@pytest.fixture(scope="module")
def two_threads(tmp_path_factory):
    """The final state of an uninterrupted run on two threads."""
    torch.set_num_threads(2)
    try:
        return _final_state(tmp_path_factory.mktemp("two-threads"))["run"]
    finally:
        torch.set_num_threads(1)


@needs_two_cores
def test_resume_on_two_threads_is_bit_identical_to_a_run_on_two_threads(
    uninterrupted, two_threads, tmp_path
):
    """Several threads split the sums differently from one, but the same way every
    time: a run on two threads, stopped and resumed on two threads, ends bit-identical
    to an uninterrupted run on two threads (and differs from the one-thread run)."""
    torch.set_num_threads(2)
    try:
        resumed = _final_state(tmp_path, (StopAfter("burn_in", 1), StopAtStep("train", 2)))["run"]
    finally:
        torch.set_num_threads(1)
    for key in ("model", "ema", "optimizer", "loader", "rng"):
        _assert_identical(two_threads[key], resumed[key], key)
    one_thread = uninterrupted["run"]["model"]
    assert any(not torch.equal(one_thread[k], two_threads["model"][k]) for k in one_thread)


@needs_two_cores
def test_a_run_begun_on_two_threads_resumes_on_two_in_a_one_thread_process(two_threads, tmp_path):
    """A worker with another number of cores picks the job up: the trainer goes back
    to the run's thread count while it runs, so the result is still bit-identical."""
    config = _config()
    torch.set_num_threads(2)
    try:
        with pytest.raises(StopRequested):
            Trainer(config, tmp_path, device="cpu", callbacks=[StopAfter("burn_in", 1)]).run(STAGES)
    finally:
        torch.set_num_threads(1)
    seen = RecordThreads()
    with pytest.raises(StopRequested):
        Trainer(config, tmp_path, device="cpu", callbacks=[seen, StopAtStep("train", 2)]).run(
            STAGES
        )
    assert seen.threads == {"burn_in": 2, "train": 2}
    assert torch.get_num_threads() == 1  # the process's own setting is back
    resumed = _final_state(tmp_path)["run"]
    for key in ("model", "ema", "optimizer", "loader", "rng"):
        _assert_identical(two_threads[key], resumed[key], key)


def test_a_run_begun_on_more_threads_than_cores_says_it_will_differ(tmp_path, caplog):
    """Too few cores to repeat the run's split: it carries on, on this process's
    threads, and the log says the result will not be bit-identical."""
    config = _config()
    with pytest.raises(StopRequested):
        Trainer(config, tmp_path, device="cpu", callbacks=[StopAfter("burn_in", 1)]).run(STAGES)
    path = tmp_path / "state" / "latest.pt"
    state = torch.load(path, weights_only=True)
    state["threads"] = 4096
    checkpoint.save_training_state(path, state)
    seen = RecordThreads()
    with caplog.at_level(logging.WARNING, logger="dyart"):
        with pytest.raises(StopRequested):
            Trainer(config, tmp_path, device="cpu", callbacks=[seen, StopAfter("burn_in", 2)]).run(
                STAGES
            )
    assert seen.threads == {"burn_in": 1}
    assert (seen.info["threads"], seen.info["threads_began"]) == (1, 4096)
    assert "the run began on 4096" in caplog.text and "not be bit-identical" in caplog.text


class CopyAt(Callback):
    """Copies the model files and metrics.jsonl aside at one epoch's end."""

    def __init__(self, out_dir, stage: str, epoch: int, to):
        self.out_dir, self.at, self.to = out_dir, (stage, epoch), to

    def on_epoch_end(self, stage, epoch, row):
        if (stage, epoch) == self.at:
            self.to.mkdir()
            for path in self.out_dir.glob("model-*"):
                shutil.copy2(path, self.to / path.name)
            shutil.copy2(self.out_dir / "metrics.jsonl", self.to / "metrics.jsonl")


class RecordCheckpoints(Callback):
    def __init__(self):
        self.saved = []

    def on_checkpoint(self, kind, path, stage, epoch):
        self.saved.append((kind, stage, epoch))


def _rows(out_dir):
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["stage"], r["epoch"], r["train_loss"]) for r in map(json.loads, lines)]


def test_a_kill_after_an_epochs_state_is_saved_loses_no_model_file_or_row(tmp_path):
    """Killed between an epoch's state and its model files and row: resuming writes them.

    The crash is rebuilt from a run stopped after train epoch 2 whose model files and
    metrics.jsonl are put back as they were after epoch 1.
    """
    config = _config(val_size=0)  # no validation: every train epoch writes the best model
    straight, crashed, aside = tmp_path / "straight", tmp_path / "crashed", tmp_path / "aside"
    Trainer(config, straight, device="cpu").run(STAGES)
    copy = CopyAt(crashed, "train", 1, aside)
    with pytest.raises(StopRequested):
        Trainer(config, crashed, device="cpu", callbacks=[copy, StopAfter("train", 2)]).run(STAGES)
    for path in aside.iterdir():
        shutil.copy2(path, crashed / path.name)
    assert ("train", 2) not in [row[:2] for row in _rows(crashed)]

    record = RecordCheckpoints()
    Trainer(config, crashed, device="cpu", callbacks=[record]).run(STAGES)
    assert record.saved == [("latest", "train", 2), ("best", "train", 2), ("final", "train", 2)]
    assert _rows(crashed) == _rows(straight)
    for name in ("model-best.safetensors", "model-latest.safetensors"):
        assert (crashed / name).read_bytes() == (straight / name).read_bytes(), name


class RecordStageStarts(Callback):
    def __init__(self):
        self.starts = []

    def on_stage_start(self, stage, info):
        self.starts.append((stage, info))


def test_an_unreadable_state_falls_back_to_the_one_before(uninterrupted, tmp_path, caplog):
    """A latest.pt the disk spoiled costs the work since the state before, not the run."""
    config = _config()
    for stop in (StopAfter("burn_in", 2), StopAfter("train", 1)):
        with pytest.raises(StopRequested):
            Trainer(config, tmp_path, device="cpu", callbacks=[stop]).run(STAGES)
    latest = tmp_path / "state" / "latest.pt"
    assert (tmp_path / "state" / "previous.pt").is_file()
    latest.write_bytes(latest.read_bytes()[:1000])  # cut short
    record = RecordStageStarts()
    end = StopAfter("train", config.epochs)
    with caplog.at_level(logging.WARNING, logger="dyart"), pytest.raises(StopRequested):
        Trainer(config, tmp_path, device="cpu", callbacks=[record, end]).run(STAGES)
    assert "resumed from the state saved before it" in caplog.text
    [(stage, note)] = [(stage, info["fallback"]) for stage, info in record.starts]
    assert stage == "train" and note.startswith(f"checkpoint: {latest} is not a readable")
    resumed = torch.load(latest, weights_only=True)
    for key in ("model", "ema", "optimizer", "schedule", "loader", "rng"):
        _assert_identical(uninterrupted["run"][key], resumed["run"][key], key)
    rows = [row[:2] for row in _rows(tmp_path)]
    assert len(rows) == len(set(rows))  # the epoch done again is not written twice
