"""The trainer: burn-in, the method, then AutoAttack — resumable at any step.

A run is a sequence of stages (ALGORITHM.md §6):

* ``burn_in``: clean cross-entropy for ``burn_in_epochs`` at ``burn_in_lr``, a
  step schedule planned for twice as many epochs (so it ends still at the peak).
* ``train``: the configured method, starting from the burn-in's EMA weights
  loaded into both the live and the EMA model, with a fresh optimizer and
  schedule.
* ``evaluate``: AutoAttack on the best checkpoint's EMA model.

Each epoch ends with the EMA model validated on the held-out images (clean and
PGD with the CW loss), ``state/latest.pt`` written and the best checkpoint kept.
``Trainer.run`` resumes from ``state/latest.pt`` when there is one, and ends
where an uninterrupted run would, bit for bit. On the CPU the number of torch
threads decides how sums are split, so the state records it and a resumed run
uses it again (while it runs; the process's setting is restored after), unless
the machine has fewer cores than that: then it says so and carries on.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dyart import catalog, checkpoint
from dyart.callbacks import Callback, CallbackList, MetricSums, make_row
from dyart.config import TrainConfig
from dyart.ema import EMA
from dyart.errors import CheckpointError, ConfigError, NonFiniteLossError, StopRequested
from dyart.files import file_sha256
from dyart.schedule import Schedule, build_optimizer

STAGES = ("burn_in", "train", "evaluate")
STATE_FORMAT = "dyart-training-state/1"
LOG_INTERVAL = 50  # steps between host syncs for on_step and the finiteness check

log = logging.getLogger("dyart")


@dataclass
class StageRun:
    """Everything one stage trains and everything needed to resume it."""

    name: str
    model: nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    loader: Any
    method: Any
    epochs: int
    grad_clip: float
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches completed in the current epoch
    step: int = 0  # optimizer steps completed in the stage
    seconds: float = 0.0  # time spent in the current epoch before a resume
    sums: Tensor | None = None  # per-epoch sums and counts of METRIC_KEYS
    best: dict[str, Any] = field(default_factory=lambda: {"val_pgd_acc": None, "epoch": 0})
    row: dict[str, Any] | None = None  # the last finished epoch's metrics row

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "loader": self.loader.state_dict(),
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "seconds": self.seconds,
            "sums": self.sums,
            "best": dict(self.best),
            "row": self.row,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.loader.load_state_dict(state["loader"])
        for key in ("epoch", "batch", "step", "seconds", "sums", "best"):
            setattr(self, key, state[key])
        self.row = state.get("row")  # absent from states saved before rows were kept


class Trainer:
    """Runs a :class:`TrainConfig` as stages, writing everything under ``out_dir``.

    Args:
        config: the validated run configuration.
        out_dir: folder for ``state/latest.pt``, ``burn_in.pt``,
            ``model-<kind>.safetensors`` + ``.json`` cards, ``metrics.jsonl``
            and ``results.json``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
        data_dir: where on-disk datasets live.
        callbacks: :class:`dyart.callbacks.Callback` objects.
        init_from: a burn-in checkpoint (``burn_in.pt`` of an earlier run) to
            reuse instead of training the burn-in.
    """

    def __init__(
        self,
        config: TrainConfig,
        out_dir: str | Path,
        *,
        device: str = "auto",
        data_dir: str | Path | None = None,
        callbacks: list[Callback] | tuple[Callback, ...] = (),
        init_from: str | Path | None = None,
    ):
        config.validate()
        self.config = config
        self.out_dir = Path(out_dir)
        self.device = resolve_device(device)
        self.data_dir = data_dir
        self.callbacks = CallbackList(callbacks)
        self.init_from = None if init_from is None else Path(init_from)
        self._init_from_given = None if init_from is None else str(init_from)
        self.adopted: dict[str, Any] | None = None  # the burn-in reused: path, sha256, key
        self.state_path = self.out_dir / "state" / "latest.pt"
        self.fallback: str | None = None  # why the run resumed from the state before
        self.resumed_from: Path | None = None  # the state file the run resumed from
        self._fallback_told = False
        self.done: list[str] = []
        self.data: Any = None
        self.threads_began = 0  # torch threads recorded in the state resumed from

    # --- the stages -------------------------------------------------------------

    def run(self, stages: tuple[str, ...] | list[str] = STAGES) -> dict[str, Any]:
        """Run ``stages`` in order, resuming from ``state/latest.pt`` if present.

        Returns:
            ``{"out_dir", "checkpoints": {kind: safetensors path}, "best",
            "evaluation"}``.

        Raises:
            StopRequested: a callback's ``should_stop`` returned True (state saved).
            NonFiniteLossError: the loss became NaN/inf (the last good state is kept).
        """
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ConfigError("stages", f"{unknown} not in {', '.join(STAGES)}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        saved = self._load_latest()
        if saved is None:
            self._refuse_earlier_outputs()
        self.done = list(saved["done"]) if saved else []
        self.adopted = saved.get("init_from") if saved else None
        resume = saved["run"] if saved else None
        threads = torch.get_num_threads()
        self.threads_began = int(saved.get("threads", 0)) if saved else 0
        try:
            self._resume_threads(self.threads_began)
            # generated data is read (and required) only while the train stage is to run
            pending_train = "train" in stages and "train" not in self.done
            mixes = pending_train and self.config.extra_data_frac > 0
            self.data = self._load_data(extra=mixes)
            if mixes and self.data.extra_x is None:
                raise ConfigError(
                    "extra_data_frac",
                    f"{self.config.extra_data_frac} asks for generated data, but there is no "
                    f"generated/{self.config.dataset}.npz under the data directory "
                    f"({self.data_dir})",
                )
            pending = [s for s in STAGES if s in stages and s not in self.done]
            if saved and not pending:
                log.info("%s: the run is already complete (%s done); nothing to do",
                         self.out_dir, ", ".join(self.done) or "no stage")  # fmt: skip
            # lazily: a stage that trains undoes "evaluate" in done, so it runs again
            for stage in (s for s in STAGES if s in stages and s not in self.done):
                state = resume if resume and resume["name"] == stage else None
                if stage == "evaluate":
                    self._evaluate()
                else:
                    self._forget_evaluation()
                    self._train_stage(stage, state)
                self.done.append(stage)
                self._save_latest(None)
        finally:
            torch.set_num_threads(threads)
        return self._summary()

    def _refuse_earlier_outputs(self) -> None:
        """A fresh start in a folder holding another run's files would mix the two runs:
        rows appended to its metrics.jsonl, its results.json reported as this model's.

        A lone ``burn_in.pt`` is allowed with ``init_from``: it is the copy of an
        adoption cut short, and the adoption writes it again.
        """
        names = ["metrics.jsonl", "results.json", "burn_in.pt"]
        found = [n for n in names if (self.out_dir / n).is_file()]
        found += sorted(p.name for p in self.out_dir.glob("model-*") if p.is_file())
        if self.init_from is not None and found == ["burn_in.pt"]:
            return
        if found:
            raise ConfigError(
                "out",
                f"{self.out_dir} holds an earlier run's outputs ({', '.join(found[:4])}"
                f"{', ...' if len(found) > 4 else ''}) but no training state to resume "
                "from; give a new out folder, or remove those files",
            )

    def _forget_evaluation(self) -> None:
        """A stage that trains supersedes an earlier evaluation: it runs again later."""
        if "evaluate" in self.done:
            self.done.remove("evaluate")
            (self.out_dir / "results.json").unlink(missing_ok=True)
        shutil.rmtree(self.out_dir / "state" / "autoattack", ignore_errors=True)

    def _resume_threads(self, began: int) -> None:
        """Use the thread count the run began with, so its sums split as before."""
        now = torch.get_num_threads()
        if self.device.type != "cpu" or began <= 0 or began == now:
            return
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        cores = cores or os.cpu_count() or 1
        if began <= cores:
            log.info("resuming on %d torch threads, as the run began (not %d)", began, now)
            torch.set_num_threads(began)
        else:
            log.warning(
                "resuming on %d torch threads: the run began on %d and this machine has %d "
                "cores; from here sums split differently, so the result will not be "
                "bit-identical to an uninterrupted run",
                now, began, cores,
            )  # fmt: skip

    def _train_stage(self, stage: str, state: dict[str, Any] | None) -> None:
        if stage == "burn_in" and self.init_from is not None and state is None:
            self._adopt_burn_in(self.init_from)
            return
        if stage == "burn_in" and self.config.burn_in_epochs == 0:
            return
        if stage == "train" and self.init_from is not None and state is None:
            if "burn_in" not in self.done:  # the stages left the burn-in out
                self._adopt_burn_in(self.init_from)
        run = self._build_stage(stage)
        if state is not None:
            run.load_state_dict(state)
            checkpoint.restore_rng(state["rng"])
            self._finish_epoch_end(run)
        self.callbacks.on_stage_start(
            stage,
            {"epochs": run.epochs, "steps_per_epoch": len(run.loader),
             "start_epoch": run.epoch, "resumed": state is not None, "start_step": run.step,
             "state": str(self.resumed_from) if state is not None else None,
             "threads": torch.get_num_threads() if self.device.type == "cpu" else None,
             "threads_began": self.threads_began or None,
             "fallback": self._fallback_note()},
        )  # fmt: skip
        while run.epoch < run.epochs:
            self._train_epoch(run)
            self._end_epoch(run)
        self._finish_stage(run)

    def _build_stage(self, stage: str) -> StageRun:
        """Model, EMA, optimizer, schedule, loader and method of a fresh stage."""
        from dyart.data import BatchLoader
        from dyart.methods import get_method

        cfg, data = self.config, self.data
        index = STAGES.index(stage)
        torch.manual_seed(cfg.seed + index)  # each stage starts from its own seed
        model = self._build_model()
        if stage == "train":
            self._load_start_weights(model)
        burn = stage == "burn_in"
        epochs = cfg.burn_in_epochs if burn else cfg.epochs
        lr = cfg.burn_in_lr if burn else cfg.lr
        loader = BatchLoader(
            data.train_x, data.train_y, cfg.batch_size, shuffle=True, augment=cfg.augment,
            flip=data.card.channels == 3, pad=_crop_padding(data.card.image_size),
            drop_last=True, seed=cfg.seed + index, extra_x=data.extra_x, extra_y=data.extra_y,
            extra_frac=0.0 if burn else cfg.extra_data_frac,
        )  # fmt: skip
        if len(loader) == 0:
            raise ConfigError(
                "batch_size",
                f"{cfg.batch_size} is larger than the {len(data.train_x)} training images",
            )
        optimizer = build_optimizer(
            model, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        schedule = Schedule(
            optimizer, "step" if burn else cfg.schedule,
            epochs=2 * epochs if burn else epochs,  # burn-in: step planned for 2x, used half
            steps_per_epoch=len(loader), lr=lr, warmup_frac=cfg.warmup_frac,
        )  # fmt: skip
        ema = EMA(model, decay=cfg.ema_decay, total_steps=epochs * len(loader))
        ema.module.eval()
        method = (
            get_method("clean", dataset=cfg.dataset)
            if burn
            else get_method(cfg.method, dataset=cfg.dataset, **cfg.hparams)
        )
        clip = 0.0 if burn else cfg.grad_clip
        return StageRun(stage, model, ema, optimizer, schedule, loader, method, epochs, clip)

    def _train_epoch(self, run: StageRun) -> None:
        """One epoch of optimizer steps; no host sync except every LOG_INTERVAL steps."""
        run.model.train()
        if run.batch == 0:
            run.loader.set_epoch(run.epoch)
            run.sums = None
        sums = MetricSums(self.device, run.sums)
        started = time.perf_counter() - run.seconds
        total_steps = run.epochs * len(run.loader)
        for x, y in _progress(run, iter(run.loader)):
            run.method.progress = (run.step + 1) / total_steps  # for an eps warm-up
            loss, metrics = train_step(
                run.model, run.method, run.optimizer, run.ema, x, y,
                grad_clip=run.grad_clip, precision=self.config.precision,
            )  # fmt: skip
            run.schedule.step_batch()
            sums.add(loss, metrics, run.step)
            run.step += 1
            run.batch += 1
            if run.batch % LOG_INTERVAL == 0:
                interval = sums.interval_means()  # host sync, once per interval
                self._check_finite(run, sums)
                self.callbacks.on_step(run.name, run.epoch + 1, run.step, interval)
            if self.callbacks.should_stop():
                run.seconds, run.sums = time.perf_counter() - started, sums.totals
                self._stop(run, sums)
        run.seconds, run.sums = time.perf_counter() - started, sums.totals
        self._check_finite(run, sums, weights=True)

    def _end_epoch(self, run: StageRun) -> None:
        """Validate the EMA model, write the row and the checkpoints, call back."""
        run.ema.copy_buffers(run.model)
        lr = run.optimizer.param_groups[0]["lr"]
        run.schedule.step_epoch()
        started = time.perf_counter()
        val_clean, val_pgd = self._validate(run.ema.module, run.epoch)
        run.seconds += time.perf_counter() - started
        means = MetricSums(self.device, run.sums).epoch_means()
        row = make_row(run.name, run.epoch + 1, lr, means, val_clean, val_pgd, run.seconds)
        run.epoch, run.batch, run.seconds, run.sums = run.epoch + 1, 0, 0.0, None
        improved = run.name == "train" and _improves(val_pgd, run.best["val_pgd_acc"])
        if improved:
            run.best = {"val_pgd_acc": val_pgd, "epoch": run.epoch}
        run.row = row
        self._save_latest(run)  # from here the epoch is done; what follows is redone on resume
        paths = [("latest", self._save_model(run.ema.module, "latest", run))]
        if _saves_best(run):
            paths.append(("best", self._save_model(run.ema.module, "best", run)))
        self._append_row(row)
        self.callbacks.on_epoch_end(run.name, run.epoch, row)
        for kind, path in paths:
            self.callbacks.on_checkpoint(kind, path, run.name, run.epoch)
        if self.callbacks.should_stop():
            raise StopRequested(f"stopped after {run.name} epoch {run.epoch}; state saved")

    def _finish_epoch_end(self, run: StageRun) -> None:
        """Redo what a crash cut short after an epoch's state was saved.

        The state is saved first at an epoch's end, then the model files and the
        metrics row. A run killed in between resumes here: a model file whose card
        is not this epoch's is written again (the EMA model is the one the state
        holds), and a row missing from ``metrics.jsonl`` is appended.
        """
        if run.batch != 0 or run.epoch == 0 or run.row is None:
            return
        kinds = ["latest", "best"] if _saves_best(run) else ["latest"]
        for kind in kinds:
            if _card_position(self._model_path(kind)) != (run.name, run.epoch):
                path = self._save_model(run.ema.module, kind, run)
                log.info("%s: wrote %s again after an interrupted epoch end", run.name, path)
                self.callbacks.on_checkpoint(kind, path, run.name, run.epoch)
        if (run.name, run.epoch) not in _rows_written(self.out_dir / "metrics.jsonl"):
            self._append_row(run.row)

    def _append_row(self, row: dict[str, Any]) -> None:
        path = self.out_dir / "metrics.jsonl"
        if self.fallback and (row["stage"], row["epoch"]) in _rows_written(path):
            return  # an epoch done again after a fallback to the state before
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _finish_stage(self, run: StageRun) -> None:
        if run.name == "burn_in":
            path = self.out_dir / "burn_in.pt"
            state = {
                "format": "dyart-burn-in/1",
                "ema": run.ema.module.state_dict(),
                "config": json.dumps(self.config.to_dict()),
                "burn_in_key": json.dumps(self.config.burn_in_key()),
                "data_split": self.config.dataset_card.split,
            }
            checkpoint.save_training_state(path, state)
            kind = "burn_in"
        else:
            kind = "final"
        saved = self._save_model(run.ema.module, kind, run)
        self.callbacks.on_checkpoint(kind, saved, run.name, run.epoch)

    def _evaluate(self) -> None:
        """AutoAttack on the best checkpoint's EMA model (skipped if no eval_eps)."""
        from dyart.evaluate import autoattack_eval, pixels

        cfg = self.config
        if not cfg.eval_eps:
            return
        kind = next(
            (k for k in ("best", "final", "burn_in") if self._model_path(k).is_file()), None
        )
        if kind is None:
            raise CheckpointError(f"checkpoint: no trained model under {self.out_dir} to evaluate")
        model = checkpoint.load_model(self._model_path(kind), device=self.device)
        n = min(cfg.eval_n, len(self.data.test_x))
        x = pixels(self.data.test_x[:n], self.device)
        y = self.data.test_y[:n].to(self.device)
        info = {"epochs": 0, "steps_per_epoch": 0, "eps": list(cfg.eval_eps), "n": n}
        self.callbacks.on_stage_start("evaluate", {**info, "preset": cfg.eval_preset})
        result = autoattack_eval(  # the stop request is asked before each attack
            model, x, y, eps_list=list(cfg.eval_eps), preset=cfg.eval_preset,
            state_dir=self.out_dir / "state" / "autoattack", seed=cfg.seed,
            should_stop=self.callbacks.should_stop,
        )  # fmt: skip
        result["checkpoint"] = kind
        result["dataset"] = cfg.dataset
        result["leaderboard_grade"] = catalog.leaderboard_grade(cfg.dataset, cfg.eval_preset, n)
        checkpoint.atomic_write(
            self.out_dir / "results.json", lambda f: f.write(json.dumps(result, indent=2).encode())
        )
        checkpoint.update_card(self._model_path(kind).with_suffix(".json"), autoattack=result)
        self._fill_robustbench_entry(kind, result)
        self.callbacks.on_evaluation(result)

    def _fill_robustbench_entry(self, kind: str, result: dict[str, Any]) -> None:
        """Put a leaderboard-grade AutoAttack result into the RobustBench entry; any other
        result leaves its numbers null, and its footnote says why."""
        from dyart.models import robustbench

        path = self.out_dir / f"model-{kind}-robustbench.entry.json"
        if path.is_file():
            entry = robustbench.with_results(json.loads(path.read_text()), self.config, result)
            robustbench.write_entry(path, entry)

    # --- pieces -----------------------------------------------------------------

    def _validate(self, model: nn.Module, epoch: int) -> tuple[float | None, float | None]:
        """Clean and PGD-CW accuracy of the EMA model on the held-out images."""
        from dyart.evaluate import clean_accuracy, pgd_accuracy

        if len(self.data.val_x) == 0:
            return None, None
        x = self.data.val_x.to(self.device).float() / 255
        y = self.data.val_y.to(self.device)
        clean = clean_accuracy(model, x, y)
        robust = pgd_accuracy(
            model, x, y, eps=self.data.card.eps, steps=self.config.val_pgd_steps,
            loss="cw", seed=self.config.seed * 1000 + epoch,
        )  # fmt: skip
        return clean, robust

    def _check_finite(self, run: StageRun, sums: MetricSums, weights: bool = False) -> None:
        """Raise if a loss was NaN/inf; with ``weights``, also if a weight or EMA value is.

        A step can spoil the weights with a finite loss (an inf gradient), so
        before a state is saved as good its tensors are checked too.
        """
        bad_step = sums.first_bad_step()  # host sync
        advice = (
            f"lower lr (now {run.optimizer.param_groups[0]['lr']:.3g}), set grad_clip, or "
            f"check the hyperparameters. The last good state is kept at {self.state_path}"
        )
        if bad_step >= 0:
            raise NonFiniteLossError(
                f"the {run.name} loss became non-finite (NaN or inf) at step {bad_step + 1} "
                f"(epoch {bad_step // len(run.loader) + 1}); {advice}"
            )
        if weights:
            bad = _non_finite_tensors(run.model) + _non_finite_tensors(run.ema.module)
            if bad:
                raise NonFiniteLossError(
                    f"the {run.name} weights became non-finite (NaN or inf) in epoch "
                    f"{run.epoch + 1} with a finite loss ({', '.join(bad[:3])}); {advice}"
                )

    def _stop(self, run: StageRun, sums: MetricSums) -> None:
        self._check_finite(run, sums, weights=True)  # never save a non-finite state as good
        self._save_latest(run)
        raise StopRequested(
            f"stopped at {run.name} epoch {run.epoch + 1} step {run.step}; state saved to "
            f"{self.state_path} (run again with the same out_dir to resume)"
        )

    def _save_latest(self, run: StageRun | None) -> None:
        state = {
            "format": STATE_FORMAT,
            "config": json.dumps(self.config.to_dict(), sort_keys=True),
            "done": list(self.done),
            "threads": torch.get_num_threads(),
            "data_split": self.config.dataset_card.split,
            "init_from": self.adopted,
            "run": None if run is None else {**run.state_dict(), "rng": checkpoint.capture_rng()},
        }
        if self.state_path.is_file():  # the state before stays as a fallback
            checkpoint.keep_copy(self.state_path, self.previous_state_path)
        checkpoint.save_training_state(self.state_path, state)

    def _fallback_note(self) -> str | None:
        """Why this run resumed from the state before the latest: once, then None."""
        note, self._fallback_told = None if self._fallback_told else self.fallback, True
        return note

    @property
    def previous_state_path(self) -> Path:
        return self.state_path.with_name("previous.pt")

    def _load_latest(self) -> dict[str, Any] | None:
        if not self.state_path.is_file() and not self.previous_state_path.is_file():
            return None
        try:  # on CPU: the RNG states must stay there
            state = checkpoint.load_training_state(self.state_path)
            self.resumed_from = self.state_path
        except CheckpointError as exc:
            if not self.previous_state_path.is_file():
                raise
            self.fallback = (
                f"{exc}; resumed from the state saved before it, "
                f"{self.previous_state_path} (the work since is done again)"
            )
            log.warning("%s", self.fallback)
            state = checkpoint.load_training_state(self.previous_state_path)
            self.resumed_from = self.previous_state_path
        saved = catalog.with_new_defaults(json.loads(state["config"]))
        changed = sorted(k for k, v in self.config.to_dict().items() if saved.get(k) != v)
        if changed:
            raise CheckpointError(
                f"checkpoint: {self.state_path} was written for a different config "
                f"(fields {', '.join(changed)}); use a new out_dir or the same config"
            )
        self._check_split(state, self.state_path)
        return state

    def _check_split(self, state: dict[str, Any], path: Path) -> None:
        """Refuse a state made on another version of the dataset's split."""
        reason = _split_mismatch(state, path, self.config)
        if reason:
            raise CheckpointError(f"{reason}; start a new run (a new out_dir, or a new job)")

    def _load_data(self, extra: bool = False) -> Any:
        from dyart.data import load_dataset

        cfg = self.config
        return load_dataset(
            cfg.dataset, self.data_dir, val_size=cfg.val_size, seed=cfg.seed, device=self.device,
            extra=extra,
        )  # fmt: skip

    def _build_model(self) -> nn.Module:
        from dyart.models import build_model

        spec = dict(self._build_spec())
        return build_model(spec.pop("name"), **spec).to(self.device)

    def _build_spec(self) -> dict[str, Any]:
        card = self.config.dataset_card
        return {
            "name": self.config.architecture,
            "num_classes": card.num_classes,
            "in_channels": card.channels,
            "image_size": card.image_size,
            "norm_layer": self.config.norm_layer,
            "mean": list(card.mean),
            "std": list(card.std),
        }

    def _load_start_weights(self, model: nn.Module) -> None:
        """The train stage starts from the burn-in's EMA weights.

        The burn-in is this run's, or ``init_from``'s when the stages left the burn-in
        out; with ``burn_in_epochs`` 0 there is none and training starts from scratch.

        Raises:
            ConfigError: the config asks for a burn-in and there is none to start from.
        """
        path = self.out_dir / "burn_in.pt"
        if path.is_file():
            state = checkpoint.load_training_state(path)
            model.load_state_dict(state["ema"])
        elif self.config.burn_in_epochs > 0:
            raise ConfigError(
                "stages",
                f"the train stage starts from the burn-in (burn_in_epochs="
                f"{self.config.burn_in_epochs}) and {path} does not exist: run the burn_in "
                "stage first, or give init_from the burn_in.pt of an earlier run",
            )

    def _adopt_burn_in(self, source: Path) -> None:
        """Reuse another run's burn-in: check it fits, copy it into this run."""
        state = checkpoint.load_training_state(source)
        reason = _burn_in_mismatch(state, source, self.config)
        if reason:
            raise CheckpointError(reason)
        model = self._build_model()
        model.load_state_dict(state["ema"])  # fails loudly if the shapes differ
        with open(source, "rb") as src:  # complete or absent, never a truncated copy
            copy = checkpoint.atomic_write(
                self.out_dir / "burn_in.pt", lambda f: shutil.copyfileobj(src, f)
            )
        self.adopted = {
            "path": self._init_from_given,
            "sha256": file_sha256(copy),
            "burn_in_key": json.loads(state.get("burn_in_key", "{}")),
        }

    def _model_path(self, kind: str) -> Path:
        return self.out_dir / f"model-{kind}.safetensors"

    def _save_model(self, model: nn.Module, kind: str, run: StageRun) -> Path:
        card = checkpoint.model_card(
            self.config, self._build_spec(), kind, run.name, run.epoch, run.best
        )
        if self.adopted is not None:  # the burn-in settings used are the reused one's
            card["init_from"] = self.adopted
            key = self.adopted["burn_in_key"]
            card["config"].update({k: key[k] for k in ("burn_in_epochs", "burn_in_lr") if k in key})
        path, _ = checkpoint.save_model(self._model_path(kind), model, card)
        if kind in ("best", "final") and _has_robustbench_layout(self.config):
            from dyart.models import robustbench

            bench = path.with_name(f"model-{kind}-robustbench.pt")
            robustbench.save(bench, model, robustbench.entry(self.config, model))
        return path

    def _summary(self) -> dict[str, Any]:
        kinds = ("burn_in", "latest", "best", "final")
        results = self.out_dir / "results.json"
        return {
            "out_dir": str(self.out_dir),
            "checkpoints": {
                k: str(self._model_path(k)) for k in kinds if self._model_path(k).is_file()
            },
            "results": str(results) if results.is_file() else None,
            "evaluation": json.loads(results.read_text()) if results.is_file() else None,
        }


def train_step(
    model: nn.Module,
    method: Callable[[nn.Module, Tensor, Tensor], tuple[Tensor, dict[str, Tensor]]],
    optimizer: torch.optim.Optimizer,
    ema: EMA,
    x: Tensor,
    y: Tensor,
    *,
    grad_clip: float = 0.0,
    precision: str = "fp32",
) -> tuple[Tensor, dict[str, Tensor]]:
    """One optimizer step: the method's loss (its forward and backward passes, the
    attack's or boundary search's included, under bf16 autocast when ``precision`` is
    ``bf16``), then gradient-norm clipping (``grad_clip`` > 0), the optimizer and the
    EMA update. Returns the loss and the method's metrics, still on the device."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss, metrics = method(model, x, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    ema.update(model)
    return loss, metrics


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``, ``cuda`` or ``cuda:N`` as given.

    Raises:
        ConfigError: ``device``, for anything else (mps, xla, meta... are not supported)
            or a CUDA device this machine does not have.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    match = re.fullmatch(r"cpu|cuda(?::(\d+))?", device)
    if match is None:
        raise ConfigError("device", f"{device!r} is not a device; expected auto, cpu or cuda[:N]")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", f"{device!r} asked for, but CUDA is not available here")
    if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
        raise ConfigError(
            "device", f"{device!r} asked for, but this machine has {torch.cuda.device_count()} "
            "CUDA device(s), numbered from 0",
        )  # fmt: skip
    return torch.device(device)


def _saves_best(run: StageRun) -> bool:
    """Whether the epoch just ended writes the best model: it improved, or nothing judges."""
    if run.name != "train" or run.row is None:
        return False
    return run.row.get("val_pgd_acc") is None or run.best["epoch"] == run.epoch


def _card_position(path: Path) -> tuple[str, int] | None:
    """(stage, epoch) the model card beside ``path`` records; None if unreadable."""
    try:
        card = json.loads(path.with_suffix(".json").read_text())
        return str(card["stage"]), int(card["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _rows_written(path: Path) -> set[tuple[str, int]]:
    """(stage, epoch) of every whole row in a metrics.jsonl."""
    rows = set()
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                rows.add((str(row["stage"]), int(row["epoch"])))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a kill
    return rows


def _improves(value: float | None, best: float | None) -> bool:
    return value is not None and (best is None or value > best)


def _crop_padding(image_size: int) -> int:
    """Random-crop padding: 4 pixels on 32x32 and larger images, 1/8 of smaller ones."""
    return 4 if image_size >= 32 else max(1, image_size // 8)


def burn_in_mismatch(source: Path, config: TrainConfig) -> str | None:
    """Why the burn-in saved at ``source`` cannot start ``config``'s train stage, or None
    (the service checks a burn-in found by its config before it reuses it)."""
    return _burn_in_mismatch(checkpoint.load_training_state(source), source, config)


def _burn_in_mismatch(state: dict[str, Any], source: Path, config: TrainConfig) -> str | None:
    split = _split_mismatch(state, source, config)
    if split:
        return split
    theirs = json.loads(state.get("burn_in_key", "{}"))
    ours = config.burn_in_key()
    for key in ("dataset", "architecture", "norm_layer"):
        if theirs.get(key) != ours[key]:
            return (
                f"init_from: {source} is a burn-in of {key}={theirs.get(key)!r}, "
                f"this run needs {key}={ours[key]!r}"
            )
    # validation takes the first val_size training images; the burn-in trained on the rest
    held_out = theirs.get("val_size")
    if config.val_size > 0 and (not isinstance(held_out, int) or held_out < config.val_size):
        return (
            f"init_from: {source} is a burn-in that held out val_size={held_out!r} images, "
            f"this run validates on the first {config.val_size}: it would validate on images "
            f"it trained on; use a burn-in made with val_size {config.val_size} or more, or "
            "train the burn-in"
        )
    return None


def _split_mismatch(state: dict[str, Any], path: Path, config: TrainConfig) -> str | None:
    made, card = int(state.get("data_split", 1)), config.dataset_card
    if made == card.split:
        return None
    return (
        f"checkpoint: {path} was made on version {made} of {card.name}'s train/validation "
        f"split, this version splits it as version {card.split}: continuing would validate "
        "on images it trained on"
    )


def _non_finite_tensors(model: nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers holding NaN or inf (one sync)."""
    named = [
        (name, t)
        for name, t in [*model.named_parameters(), *model.named_buffers()]
        if t.is_floating_point()
    ]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(t).all() for _, t in named]).cpu()
    return [name for (name, _), ok in zip(named, finite.tolist(), strict=True) if not ok]


def _has_robustbench_layout(config: TrainConfig) -> bool:
    """Whether RobustBench's WideResNet loads this run's model (see dyart.models.robustbench)."""
    from dyart.models import robustbench

    return robustbench.fits(config) is None


def _progress(run: StageRun, batches: Any) -> Any:
    """A tqdm bar when stderr is a terminal; the plain iterator otherwise."""
    if not sys.stderr.isatty():
        return batches
    from tqdm import tqdm

    return tqdm(
        batches, total=len(run.loader), initial=run.batch, leave=False,
        desc=f"{run.name} {run.epoch + 1}/{run.epochs}",
    )  # fmt: skip
