"""The run configuration: one flat dataclass, validated against the catalog.

The same fields are the CLI's flags, the config files' keys, the API's job
request and the job row's ``config`` column, so a job can move between the
command line and the service unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dyart import catalog
from dyart.errors import ConfigError, ConfigErrors


@dataclass
class TrainConfig:
    """A complete, validated run: dataset, model, method and every setting.

    Build it with :meth:`from_dict` (fills defaults, raises ConfigErrors naming
    each bad field); the field meanings are in ``dyart.catalog.TRAIN_PARAMS``.
    """

    dataset: str
    architecture: str
    method: str
    hparams: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup_frac: float = 0.025
    grad_clip: float = 0.0
    ema_decay: float = 0.995
    norm_layer: str = "bn"
    augment: bool = True
    val_size: int = 1024
    val_pgd_steps: int = 40
    seed: int = 0
    burn_in_epochs: int = 2
    burn_in_lr: float = 0.1
    eval_preset: str = "standard"
    eval_eps: list[float] = field(default_factory=list)
    eval_n: int = 1000
    extra_data_frac: float = 0.0

    @classmethod
    def from_dict(
        cls, spec: dict[str, Any], data_dir: str | Path | None = None, *, stored: bool = False
    ) -> TrainConfig:
        """Validate ``spec`` against the catalog and fill every default (``stored``: a
        job's config accepted earlier; see ``catalog.validate_job``)."""
        resolved, errors = catalog.validate_job(spec, data_dir, stored=stored)
        if errors:
            raise ConfigErrors(errors)
        return cls(**resolved)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a JSON or YAML config file; ``overrides`` win over its values."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError("config", f"config file {path} does not exist")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml  # only the CLI's config files need it

            spec = yaml.safe_load(text)
        else:
            spec = json.loads(text)
        if not isinstance(spec, dict):
            raise ConfigError("config", f"{path} must hold a mapping of settings")
        theirs = spec.get("hparams") or {}
        if not isinstance(theirs, dict):
            raise ConfigError(
                "hparams",
                f"{path}: hparams must be a mapping of name: value, got {type(theirs).__name__}",
            )
        hparams = {**theirs, **overrides.pop("hparams", {})}
        return cls.from_dict({**spec, **overrides, "hparams": hparams})

    def validate(self) -> None:
        """Raise ConfigErrors naming each field that is out of its range."""
        _, errors = catalog.validate_job(self.to_dict())
        if errors:
            raise ConfigErrors(errors)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def dataset_card(self) -> catalog.DatasetCard:
        return catalog.DATASETS[self.dataset]

    def burn_in_key(self) -> dict[str, Any]:
        """The settings that decide a burn-in's result: equal keys, same burn-in."""
        keys = (
            "dataset",
            "architecture",
            "batch_size",
            "weight_decay",
            "momentum",
            "norm_layer",
            "augment",
            "val_size",
            "seed",
            "burn_in_epochs",
            "burn_in_lr",
            "ema_decay",
        )
        return {k: getattr(self, k) for k in keys}
