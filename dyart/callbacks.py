"""How the trainer reports: callbacks hooked to training events.

The trainer knows nothing of databases or terminals; the service's worker
writes progress rows and honours a cancel through these hooks, the command
line prints through :class:`ConsoleCallback`. Every hook is optional.

Epochs in hooks are 1-based ("epoch 3 of 10"); ``step`` counts optimizer
steps completed in the stage.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger("dyart")
METRIC_KEYS = (
    "loss", "clean_acc", "robust_acc", "frac_correct", "frac_found", "frac_kept",
    "margin_q10", "margin_q50", "margin_q90",
)  # fmt: skip
ROW_KEYS = (
    "stage", "epoch", "lr", "train_loss", "train_clean_acc", "train_robust_acc",
    "val_clean_acc", "val_pgd_acc", "margin_q10", "margin_q50", "margin_q90",
    "frac_correct", "frac_found", "frac_kept", "seconds",
)  # fmt: skip


class Callback:
    """Base class: override the hooks you need."""

    def on_stage_start(self, stage: str, info: dict[str, Any]) -> None:
        """A stage begins; ``info`` has epochs, steps_per_epoch, start_epoch, resumed and,
        when resumed, start_step (steps done in the stage) and state (the file resumed from)."""

    def on_step(self, stage: str, epoch: int, step: int, metrics: dict[str, float]) -> None:
        """Means of the batch metrics over the last log interval."""

    def on_epoch_end(self, stage: str, epoch: int, row: dict[str, Any]) -> None:
        """One aggregated metrics row (keys: see ``ROW_KEYS``)."""

    def on_checkpoint(self, kind: str, path: Path, stage: str, epoch: int) -> None:
        """A checkpoint file is complete on disk (``kind``: latest, best, final, burn_in).

        ``path`` is the user-facing safetensors file; its model card is
        ``path.with_suffix(".json")``.
        """

    def on_evaluation(self, result: dict[str, Any]) -> None:
        """The AutoAttack result of the evaluate stage."""

    def should_stop(self) -> bool:
        """Checked after every step; True makes the trainer save and raise StopRequested."""
        return False


class CallbackList(Callback):
    """Fans each hook out to several callbacks, in order."""

    def __init__(self, callbacks: list[Callback] | tuple[Callback, ...] = ()):
        self.callbacks = list(callbacks)

    def on_stage_start(self, stage: str, info: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_stage_start(stage, info)

    def on_step(self, stage: str, epoch: int, step: int, metrics: dict[str, float]) -> None:
        for cb in self.callbacks:
            cb.on_step(stage, epoch, step, metrics)

    def on_epoch_end(self, stage: str, epoch: int, row: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(stage, epoch, row)

    def on_checkpoint(self, kind: str, path: Path, stage: str, epoch: int) -> None:
        for cb in self.callbacks:
            cb.on_checkpoint(kind, path, stage, epoch)

    def on_evaluation(self, result: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_evaluation(result)

    def should_stop(self) -> bool:
        return any(cb.should_stop() for cb in self.callbacks)


class ConsoleCallback(Callback):
    """Logs one line per stage start and per epoch to the ``dyart`` logger."""

    def on_stage_start(self, stage: str, info: dict[str, Any]) -> None:
        if stage == "evaluate":
            log.info("evaluate: AutoAttack (%s preset) at eps %s on %s test images",
                     info.get("preset"), info.get("eps"), info.get("n"))  # fmt: skip
        elif info.get("resumed"):
            log.info(
                "resuming %s at epoch %d of %d, after step %d, from %s", stage,
                info["start_epoch"] + 1, info["epochs"], info.get("start_step", 0),
                info.get("state"),
            )  # fmt: skip
        else:
            log.info("%s: %d epochs of %d steps", stage, info["epochs"], info["steps_per_epoch"])

    def on_epoch_end(self, stage: str, epoch: int, row: dict[str, Any]) -> None:
        shown = ("lr", "train_loss", "train_clean_acc", "val_clean_acc", "val_pgd_acc", "seconds")
        parts = [f"{k}={_fmt(row.get(k))}" for k in shown]
        log.info("%s epoch %d: %s", stage, epoch, " ".join(parts))

    def on_evaluation(self, result: dict[str, Any]) -> None:
        log.info("autoattack: %s", json.dumps(result["results"]))


class StopAfter(Callback):
    """Asks to stop once ``epochs`` epochs of ``stage`` have ended (tests, demos)."""

    def __init__(self, stage: str, epochs: int):
        self.stage, self.epochs, self.done = stage, epochs, False

    def on_epoch_end(self, stage: str, epoch: int, row: dict[str, Any]) -> None:
        self.done = self.done or (stage == self.stage and epoch >= self.epochs)

    def should_stop(self) -> bool:
        return self.done


class MetricSums:
    """Per-epoch sums and counts of the batch metrics, kept on the device.

    Adding a batch costs no host sync; reading means costs one (``tolist``).
    NaN metrics (e.g. margin quantiles of a batch with no kept point) are
    left out of the means; the first step whose loss is not finite is kept.
    """

    def __init__(self, device: torch.device, totals: Tensor | None = None):
        k = len(METRIC_KEYS)
        self.totals = torch.zeros(2 * k + 1, dtype=torch.float64, device=device)
        self.totals[-1] = -1.0  # first non-finite step, -1 while none
        if totals is not None:
            self.totals.copy_(totals)
        self.mark = self.totals.clone()

    def add(self, loss: Tensor, metrics: dict[str, Tensor], step: int) -> None:
        k = len(METRIC_KEYS)
        nan = torch.full((), math.nan, device=loss.device)
        values = torch.stack([metrics.get(key, nan).detach().float() for key in METRIC_KEYS])
        finite = torch.isfinite(values)
        self.totals[:k] += torch.where(finite, values, 0.0).double()
        self.totals[k : 2 * k] += finite.double()
        first_bad = (self.totals[-1] < 0) & ~torch.isfinite(loss.detach())
        self.totals[-1] = torch.where(first_bad, float(step), self.totals[-1])

    def _means(self, totals: Tensor) -> dict[str, float | None]:
        k = len(METRIC_KEYS)
        values = totals.tolist()  # host sync
        return {
            key: (values[i] / values[k + i] if values[k + i] > 0 else None)
            for i, key in enumerate(METRIC_KEYS)
        }

    def interval_means(self) -> dict[str, float]:
        delta = self.totals - self.mark
        self.mark = self.totals.clone()
        return {k: v for k, v in self._means(delta).items() if v is not None}

    def epoch_means(self) -> dict[str, float | None]:
        return self._means(self.totals)

    def first_bad_step(self) -> int:
        return int(self.totals[-1].item())  # host sync


def make_row(
    stage: str,
    epoch: int,
    lr: float,
    means: dict[str, float | None],
    val_clean: float | None,
    val_pgd: float | None,
    seconds: float,
) -> dict[str, Any]:
    row: dict[str, Any] = {"stage": stage, "epoch": epoch, "lr": lr}
    row["train_loss"] = means["loss"]
    row["train_clean_acc"] = means["clean_acc"]
    row["train_robust_acc"] = means["robust_acc"]
    row["val_clean_acc"], row["val_pgd_acc"] = val_clean, val_pgd
    for key in ("margin_q10", "margin_q50", "margin_q90", "frac_correct", "frac_found"):
        row[key] = means[key]
    row["frac_kept"] = means["frac_kept"]
    row["seconds"] = seconds
    return row


def _fmt(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    return str(value)
