"""Checkpoints: the internal training state and the user-facing model files.

* Training state (``state/latest.pt``): model, EMA, optimizer, scheduler, every
  RNG state, loader position, stage, epoch, step, config and best-so-far —
  plain containers of tensors, numbers and strings only, so that it loads
  with ``torch.load(weights_only=True)`` (no pickle of arbitrary objects).
* For users: the EMA weights as safetensors plus a JSON model card holding
  everything needed to rebuild the model (architecture and its build
  arguments, normalisation, dataset) and to judge it (method, hyperparameters,
  config, AutoAttack results), with the sha256 of the weights file.
  :func:`load_model` rebuilds from those two files alone.

Every file is written atomically: a temporary file in the same folder,
flushed and fsynced, renamed over the target, then the folder fsynced — a
crash leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import dyart
from dyart.errors import CheckpointError
from dyart.files import atomic_write
from dyart.files import file_sha256 as file_sha256  # bench/ reads it from here

CARD_FORMAT = "dyart-model-card/1"


def save_training_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically ``torch.save`` a training state of plain containers and tensors."""
    return atomic_write(path, lambda f: torch.save(state, f))


def keep_copy(path: str | Path, copy: str | Path) -> Path:
    """Make ``copy`` a second name of ``path``'s current file (a hard link, renamed into
    place), so a later atomic write of ``path`` leaves the old content at ``copy``."""
    path, copy = Path(path), Path(copy)
    temporary = copy.with_name(f".{copy.name}.link")
    temporary.unlink(missing_ok=True)
    try:
        os.link(path, temporary)
    except OSError:  # a filesystem without hard links: copy the bytes
        shutil.copyfile(path, temporary)
    os.replace(temporary, copy)
    return copy


def load_training_state(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a training state with ``weights_only=True`` (never unpickles code).

    Raises:
        CheckpointError: the file is missing, truncated or not a training state.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint: {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        raise CheckpointError(
            f"checkpoint: {path} is not a readable training state ({exc})"
        ) from exc
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"checkpoint: {path} is not a dyart training state")
    return state


# --- RNG states as tensors (weights_only loads no numpy objects or tuples of them) ---


def capture_rng() -> dict[str, Any]:
    """Every global RNG state: torch CPU and CUDA, numpy, Python's random."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "numpy_meta": [str(np_kind), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "python_state": torch.tensor(py_state, dtype=torch.int64),
        "python_meta": [int(py_version), py_gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the states :func:`capture_rng` took."""
    torch.set_rng_state(state["torch"].cpu())
    kind, pos, has_gauss, gauss = state["numpy_meta"]
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((kind, keys, int(pos), int(has_gauss), float(gauss)))
    version, gauss_next = state["python_meta"]
    random.setstate((int(version), tuple(int(v) for v in state["python_state"]), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# --- user-facing files: safetensors + model card ---


def save_model(path: str | Path, model: nn.Module, card: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``model``'s weights as safetensors and ``card`` (+ sha256) beside it.

    Args:
        path: the ``.safetensors`` file to write; the card goes to ``.json``.
        model: the model whose ``state_dict`` is saved (the EMA model).
        card: the model card (see :func:`dyart.train.model_card`).

    Returns:
        ``(safetensors_path, card_path)``.
    """
    from safetensors.torch import save

    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    blob = _sorted_metadata(save(tensors, metadata={"format": "pt", "card": CARD_FORMAT}))
    atomic_write(path, lambda f: f.write(blob))
    card = {**card, "format": CARD_FORMAT, "weights": path.name}
    card["sha256"] = hashlib.sha256(blob).hexdigest()
    card_path = atomic_write(path.with_suffix(".json"), lambda f: f.write(_json_bytes(card)))
    return path, card_path


def _sorted_metadata(blob: bytes) -> bytes:
    """``blob`` with its header's metadata keys in sorted order.

    safetensors writes the metadata map in an order that changes from one save to
    the next (its Rust side keeps it in a hash map), so the same weights would give
    files of different bytes and sha256. Sorting keeps the header's length (it is
    padded with blanks to a multiple of 8): the tensors' offsets do not move.
    """
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > size:  # cannot happen: the same keys and values, reordered
        raise CheckpointError(f"checkpoint: safetensors header grew from {size} to {len(text)}")
    return blob[:8] + text.ljust(size, b" ") + blob[8 + size :]


def update_card(card_path: str | Path, **fields: Any) -> dict[str, Any]:
    """Add fields (e.g. ``autoattack`` results) to an existing model card."""
    card = {**read_card(card_path), **fields}
    write_card(card_path, card)
    return card


def write_card(card_path: str | Path, card: dict[str, Any]) -> None:
    """Write a whole model card at once (atomically)."""
    atomic_write(Path(card_path), lambda f: f.write(_json_bytes(card)))


def read_card(card_path: str | Path) -> dict[str, Any]:
    """Read and check a model card; CheckpointError if missing or malformed."""
    card_path = Path(card_path)
    if not card_path.is_file():
        raise CheckpointError(
            f"checkpoint: model card {card_path} does not exist; a model is its .safetensors "
            "file and its .json card side by side (the service lists both: files.safetensors "
            "and files.card)"
        )
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint: model card {card_path} is not valid JSON ({exc})"
        ) from exc
    if not isinstance(card, dict):
        raise CheckpointError(
            f"checkpoint: {card_path} is not a model card (a JSON {type(card).__name__}, "
            "not an object)"
        )
    missing = [k for k in ("format", "build_model", "sha256") if k not in card]
    if missing:
        raise CheckpointError(f"checkpoint: {card_path} is not a model card (missing {missing})")
    _check_card_fields(card, card_path)
    return card


def _check_card_fields(card: dict[str, Any], card_path: Path) -> None:
    """The fields :func:`load_model` relies on have the types it needs."""

    def refuse(field: str, problem: str) -> CheckpointError:
        return CheckpointError(f"checkpoint: model card {card_path}: {field}: {problem}")

    if not isinstance(card["sha256"], str):
        raise refuse("sha256", f"expected a hex string, got {card['sha256']!r}")
    spec = card["build_model"]
    if not isinstance(spec, dict):
        raise refuse("build_model", f"expected an object, got {type(spec).__name__}")
    if not isinstance(spec.get("name"), str):
        raise refuse("build_model.name", f"expected an architecture name, got {spec.get('name')!r}")
    # the weights must sit beside the card: a path could load a file from anywhere
    raw = card.get("weights")
    if "weights" in card and not (
        isinstance(raw, str) and raw not in ("", ".", "..") and Path(raw).name == raw
    ):
        raise refuse("weights", f"expected a file name in the card's folder, got {raw!r}")


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model from its safetensors file and model card (no pickle).

    Args:
        path: the ``.safetensors`` file or its ``.json`` card (same folder, same stem).
        device: where to put the model.

    Returns:
        The model in eval mode.

    Raises:
        CheckpointError: the card is missing or malformed (not a JSON object, a
            field of the wrong type, a ``weights`` entry that is not a file name in
            the card's folder, ``build_model`` arguments the architecture does not
            take), the weights file is missing, not safetensors, has a different
            sha256 than the card, or does not fit the architecture the card names.
    """
    weights_path, card_path, card = _resolve_pair(Path(path))
    blob = weights_path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != card["sha256"]:
        raise CheckpointError(
            f"checkpoint: {weights_path} has sha256 {digest}, the card says {card['sha256']}: "
            "the file is damaged or does not belong to this card"
        )
    tensors = _parse_safetensors(blob, weights_path)
    from dyart.models import build_model

    spec = dict(card["build_model"])
    try:
        model = build_model(spec.pop("name"), **spec)
    except (TypeError, ValueError) as exc:  # an unknown or ill-typed constructor argument
        raise CheckpointError(
            f"checkpoint: model card {card_path}: build_model: "
            f"cannot build {card['build_model']['name']!r} from {spec} ({exc})"
        ) from exc
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(
            f"checkpoint: {weights_path} does not match architecture "
            f"{card['build_model']['name']!r} of its card ({first})"
        ) from exc
    return model.to(device).eval()


def _resolve_pair(path: Path) -> tuple[Path, Path, dict[str, Any]]:
    """(weights file, card file, card) for a ``.safetensors`` or ``.json`` path."""
    if path.suffix == ".json":
        card_path, card = path, read_card(path)
        weights = path.parent / card.get("weights", path.with_suffix(".safetensors").name)
    else:
        if path.is_dir():
            raise CheckpointError(
                f"checkpoint: {path} is a folder; give a model-<kind>.safetensors file or its "
                ".json card"
            )
        if not path.is_file():
            raise CheckpointError(f"checkpoint: {path} does not exist")
        card_path = path.with_suffix(".json")
        card, weights = read_card(card_path), path
    if not weights.is_file():
        raise CheckpointError(f"checkpoint: weights file {weights} does not exist")
    return weights, card_path, card


def _parse_safetensors(blob: bytes, path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    try:
        return load(blob)
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"checkpoint: {path} is not a safetensors file ({exc})") from exc


def model_card(
    config: Any,
    build_spec: dict[str, Any],
    kind: str,
    stage: str,
    epoch: int,
    best: dict[str, Any],
) -> dict[str, Any]:
    """The JSON model card: enough to rebuild the model and to judge it."""
    card = config.dataset_card
    return {
        "kind": kind,
        "stage": stage,
        "epoch": epoch,
        "architecture": config.architecture,
        "build_model": build_spec,
        "dataset": config.dataset,
        "num_classes": card.num_classes,
        "channels": card.channels,
        "image_size": card.image_size,
        "input_range": [0.0, 1.0],
        "normalization": {"mean": list(card.mean), "std": list(card.std), "inside_model": True},
        "threat_model": {"norm": config.hparams.get("norm", "linf"), "eps": card.eps},
        "method": "clean" if stage == "burn_in" else config.method,
        "hparams": {} if stage == "burn_in" else dict(config.hparams),
        "config": config.to_dict(),
        "best": dict(best),
        "versions": {"dyart": dyart.__version__, "torch": torch.__version__},
        "autoattack": None,
    }


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
