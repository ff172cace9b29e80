"""The run configuration: one flat dataclass, validated against the catalog.

The same fields are the CLI's flags, the config files' keys, the API's job
request and the job row's ``config`` column, so a job can move between the
command line and the service unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dyart import catalog
from dyart.errors import ConfigError, ConfigErrors


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that reads ``5e-4``, ``1e-2`` and ``1e3`` as numbers.

    PyYAML follows YAML 1.1, where a float needs a dot (``5.0e-4``) and ``1e-2`` is a
    string; YAML 1.2, JSON and Python read them as numbers, and so do we.
    """
    import yaml

    return yaml.load(text, Loader=_yaml_loader())  # a SafeLoader: builds no objects


@functools.cache
def _yaml_loader() -> Any:
    import yaml  # only the CLI's config files and --hparam values need it

    class Yaml12Loader(yaml.SafeLoader):
        """SafeLoader plus YAML 1.2's floats without a dot (the class copies the resolvers)."""

    Yaml12Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Yaml12Loader


def read_spec(path: str | Path) -> dict[str, Any]:
    """The settings a JSON or YAML config file holds, unvalidated.

    Raises:
        ConfigError: ``config``, when the file is missing, a folder or not a mapping.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError("config", f"{path} is a folder; give a YAML or JSON file")
    if not path.is_file():
        raise ConfigError("config", f"config file {path} does not exist")
    text = path.read_text()
    spec = load_yaml(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    if not isinstance(spec, dict):
        raise ConfigError("config", f"{path} must hold a mapping of settings")
    return spec


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
    precision: str = "fp32"

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
        spec = read_spec(path)
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
            "precision",
        )
        return {k: getattr(self, k) for k in keys}
