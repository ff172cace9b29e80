"""Clean accuracy, PGD accuracy and AutoAttack (Croce & Hein, ICML 2020).

AutoAttack comes from the ``pyautoattack`` package. Presets:

* ``standard``: apgd-ce, apgd-t, fab-t, square — what RobustBench reports.
* ``custom``: apgd-ce, apgd-t, fab-t — what the DyART paper's script ran.
* ``fast``: apgd-ce with 10 iterations — for tests only; not an evaluation.

Each attack runs on the points every earlier attack failed to break (as
AutoAttack's ``standard`` does), so the accuracy after each attack is known.
With ``state_dir``, progress is saved per eps and per attack: an evaluation
that is interrupted resumes where it stopped. ``should_stop`` is asked before
each attack, so a stop request is honoured within one attack's time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dyart.checkpoint import atomic_write
from dyart.errors import StopRequested

PRESETS: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "custom": ("apgd-ce", "apgd-t", "fab-t"),
    "fast": ("apgd-ce",),
}
FAST_ITERATIONS = 10
_NORMS = {"linf": "Linf", "l2": "L2"}
README_EVAL = "README.md#evaluating-robustness"


class EvaluationWarning(UserWarning):
    """An evaluation whose numbers are probably not what the user thinks."""


@torch.no_grad()
def clean_accuracy(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 500) -> float:
    """Fraction of ``x`` classified as ``y`` (one host sync at the end)."""
    correct = torch.zeros((), device=y.device, dtype=torch.long)
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        correct += (logits.argmax(1) == y[start : start + batch_size]).sum()
    return correct.item() / max(1, len(x))


def pgd_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float | None = None,
    loss: str = "cw",
    norm: str = "linf",
    batch_size: int = 500,
    seed: int = 0,
) -> float:
    """Accuracy under PGD from a random start (step ``eps/4`` unless given).

    The random starts come from a generator seeded with ``seed``, so the
    global RNG (and with it a training run's exact resume) is untouched.
    """
    from dyart.attacks import pgd_attack

    generator = torch.Generator(device=x.device).manual_seed(seed)
    step = eps / 4 if step_size is None else step_size
    correct = torch.zeros((), device=y.device, dtype=torch.long)
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        x_adv = pgd_attack(
            model, xb, yb, eps=eps, step_size=step, steps=steps, loss=loss, norm=norm,
            generator=generator,
        )  # fmt: skip
        with torch.no_grad():
            correct += (model(x_adv).argmax(1) == yb).sum()
    return correct.item() / max(1, len(x))


def check_model(model: nn.Module, x: Tensor, y: Tensor) -> list[str]:
    """Warn (EvaluationWarning) about an evaluation that would mislead.

    Checks a model left in train mode, outputs that look like probabilities
    instead of logits, and inputs whose loss gradient is zero (gradient
    attacks then see nothing and robustness looks higher than it is).

    Returns:
        The warning messages issued (empty when all is well).
    """
    found = []
    if model.training:
        found.append(
            "the model is in train mode: call model.eval() before evaluating "
            f"(BatchNorm statistics and dropout change the numbers; see {README_EVAL})"
        )
    xb = x[:64].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xb)
        # the CW margin, not the cross-entropy: a confident, correct point has an exactly
        # zero CE gradient in float32 without any masking; the margin's is zero only if flat
        true = logits.gather(1, y[:64, None]).squeeze(1)
        other = logits.scatter(1, y[:64, None], -torch.inf).amax(1)
        (grad,) = torch.autograd.grad((true - other).sum(), xb, allow_unused=True)
    rows = logits.detach()
    sums_to_one = torch.allclose(rows.sum(1), torch.ones_like(rows[:, 0]))
    if bool((rows >= 0).all()) and bool(sums_to_one):
        found.append(
            "the model's outputs look like probabilities (non-negative, rows sum to 1): "
            f"return logits, remove the final softmax (see {README_EVAL})"
        )
    if grad is None or bool((grad.flatten(1).abs().sum(1) == 0).any()):
        found.append(
            "some inputs have a zero gradient of the logit margin: gradient-based attacks "
            "see nothing there and robustness looks higher than it is; check for gradient "
            f"masking (non-differentiable layers, saturation) (see {README_EVAL})"
        )
    for message in found:
        warnings.warn(message, EvaluationWarning, stacklevel=2)
    return found


def autoattack_eval(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps_list: list[float],
    preset: str = "standard",
    norm: str = "linf",
    batch_size: int = 500,
    state_dir: str | Path | None = None,
    seed: int = 0,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """AutoAttack robust accuracy at each eps, with the accuracy after each attack.

    Args:
        model: the classifier (logits out, input in [0,1]); put it in eval mode.
        x: images, float in [0,1], NCHW; ``y``: labels.
        eps_list: radii to evaluate, on the [0,1] pixel scale.
        preset: ``standard``, ``custom`` or ``fast`` (see the module docstring).
        norm: ``linf`` or ``l2``.
        batch_size: images per attack batch.
        state_dir: folder for progress files; a rerun with the same folder resumes.
        seed: AutoAttack's seed.
        should_stop: asked before each attack; when it returns True the evaluation
            stops with :class:`StopRequested` (finished attacks are kept in
            ``state_dir``).

    Returns:
        ``{"preset", "n", "norm", "attacks", "results": [{"eps", "clean_acc",
        "robust_acc", "per_attack": {attack: accuracy after it}}], "warnings"}``,
        ``warnings`` the messages of :func:`check_model` (empty when all is well).

    Raises:
        StopRequested: ``should_stop`` returned True.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset: {preset!r} is not one of {', '.join(PRESETS)}")
    if norm not in _NORMS:
        raise ValueError(f"norm: {norm!r} is not one of {', '.join(_NORMS)}")
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    warned = check_model(model, x, y)
    results = []
    # what saved progress must have been made by to be reused: the same weights,
    # images, labels and attack settings (eps is the folder)
    key = None if state_dir is None else _fingerprint(model, x, y, preset, norm, seed)
    for eps in eps_list:
        folder = None if state_dir is None else Path(state_dir) / f"eps_{eps:.6g}"
        results.append(
            _eval_one_eps(
                model, x, y, float(eps), preset, norm, batch_size, folder, seed, should_stop, key
            )
        )
    return {
        "preset": preset,
        "n": len(x),
        "norm": norm,
        "attacks": list(PRESETS[preset]),
        "results": results,
        "warnings": warned,
    }


def _eval_one_eps(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    preset: str,
    norm: str,
    batch_size: int,
    folder: Path | None,
    seed: int,
    should_stop: Callable[[], bool] | None,
    key: str | None,
) -> dict[str, Any]:
    progress = _read_progress(folder, len(x), key)
    if progress is None:
        with torch.no_grad():
            flags = torch.cat(
                [model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]
                 for i in range(0, len(x), batch_size)]
            )  # fmt: skip
        progress = {"clean_acc": flags.sum().item() / len(flags), "flags": flags.cpu().tolist()}
        progress["per_attack"] = {}
        progress["fingerprint"] = key
        _write_progress(folder, progress)
    flags = torch.tensor(progress["flags"], dtype=torch.bool, device=x.device)
    for attack in PRESETS[preset]:
        if attack in progress["per_attack"]:
            continue
        if should_stop is not None and should_stop():
            done = ", ".join(progress["per_attack"]) or "none"
            raise StopRequested(
                f"stopped during the evaluation at eps {eps:g} before {attack} "
                f"(attacks done at this eps: {done})"
            )
        flags = _run_attack(model, x, y, flags, eps, attack, preset, norm, batch_size, folder, seed)
        progress["flags"] = flags.cpu().tolist()
        progress["per_attack"][attack] = flags.sum().item() / len(flags)
        _write_progress(folder, progress)
    return {
        "eps": eps,
        "clean_acc": progress["clean_acc"],
        "robust_acc": flags.sum().item() / len(flags),
        "per_attack": dict(progress["per_attack"]),
    }


def _run_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    flags: Tensor,
    eps: float,
    attack: str,
    preset: str,
    norm: str,
    batch_size: int,
    folder: Path | None,
    seed: int,
) -> Tensor:
    """One attack on the points still robust; returns the updated robust flags."""
    from pyautoattack import AutoAttack

    index = flags.nonzero().flatten()
    if len(index) == 0:
        return flags
    adversary = AutoAttack(
        model, attacks=[attack], device=x.device, eps=eps, norm=_NORMS[norm], seed=seed,
        version="custom",
    )  # fmt: skip
    with torch.no_grad():
        num_classes = model(x[:1]).shape[1]
    _configure(adversary, preset, num_classes)
    adversary.logger.setLevel(logging.WARNING)
    state_path = None if folder is None else (folder / f"{attack}.autoattack.json").resolve()
    done = _finished_flags(state_path, attack, len(index))
    if done is None:
        _, y_adv = adversary.run_standard_evaluation(
            x[index], y[index], batch_size=batch_size, state_path=state_path
        )
        done = y_adv.to(flags.device) == y[index]
    flags = flags.clone()
    flags[index] = done.to(flags.device)
    return flags


def _configure(adversary: Any, preset: str, num_classes: int) -> None:
    """Set the attacks' parameters as AutoAttack's ``standard`` version does.

    The targeted attacks aim at the 9 most likely wrong classes (all of them on
    a 10-class dataset), and at every wrong class when there are fewer.
    """
    targets = min(9, num_classes - 1)
    adversary.apgd.n_restarts = 1
    adversary.apgd_targeted.n_restarts = 1
    adversary.apgd_targeted.n_target_classes = targets
    adversary.fab.n_restarts = 1
    adversary.fab.n_target_classes = targets
    adversary.square.n_queries = 5000
    if preset == "fast":
        apgd = adversary.apgd
        apgd.n_iter = apgd.n_iter_orig = FAST_ITERATIONS
        apgd.n_iter_2 = max(int(0.22 * FAST_ITERATIONS), 1)
        apgd.n_iter_min = max(int(0.06 * FAST_ITERATIONS), 1)
        apgd.size_decr = max(int(0.03 * FAST_ITERATIONS), 1)


def _finished_flags(state_path: Path | None, attack: str, n: int) -> Tensor | None:
    """Robust flags from a finished attack's AutoAttack state file, else None.

    pyautoattack 0.2.0 cannot continue from a state file that already holds
    robust flags (its restore path never defines its adversarial labels), so an
    attack interrupted midway is run again from its start; finished attacks
    (and every earlier eps) are never repeated.
    """
    if state_path is None or not state_path.exists():
        return None
    try:
        state = json.loads(state_path.read_text())
        flags = state["_robust_flags"]
        finished = attack in state["_run_attacks"] and len(flags) == n
    except (ValueError, KeyError, TypeError):  # written in place: a crash can cut it
        finished = False
    if not finished:
        state_path.unlink()
        return None
    return torch.tensor(flags, dtype=torch.bool)


def pixels(images: Tensor, device: torch.device | str) -> Tensor:
    """uint8 images as floats in [0, 1] on ``device``, divided on the CPU: CUDA divides
    by a number as a product with its inverse, so the same images made on another
    device would differ in their last bits, and so would an evaluation's fingerprint."""
    return (images.cpu().float() / 255).to(device)


def _fingerprint(model: nn.Module, x: Tensor, y: Tensor, preset: str, norm: str, seed: int) -> str:
    """A digest of the weights, images, labels and settings an evaluation attacks."""
    digest = hashlib.sha256(json.dumps([preset, norm, seed, len(x)]).encode())
    tensors = [("x", x), ("y", y), *sorted(model.state_dict().items())]
    for name, tensor in tensors:
        digest.update(name.encode())
        digest.update(tensor.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy())
    return digest.hexdigest()


def _read_progress(folder: Path | None, n: int, key: str | None) -> dict[str, Any] | None:
    """Saved progress at one eps, or None; progress of another evaluation is removed."""
    path = None if folder is None else folder / "progress.json"
    if path is None or not path.is_file():
        return None
    try:
        progress = json.loads(path.read_text())
        usable = progress.get("fingerprint") == key and len(progress.get("flags", ())) == n
    except (ValueError, AttributeError, TypeError):
        usable = False
    if not usable:  # another model, preset or image set: its attacks' states go too
        for stale in [path, *folder.glob("*.autoattack.json")]:
            stale.unlink(missing_ok=True)
        return None
    return progress


def _write_progress(folder: Path | None, progress: dict[str, Any]) -> None:
    if folder is not None:
        data = json.dumps(progress).encode()
        atomic_write(folder / "progress.json", lambda f: f.write(data))
