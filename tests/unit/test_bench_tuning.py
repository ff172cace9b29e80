"""bench/dyart_tuning.py: variants override the DyART recipe, and bad ones are named."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "dyart_tuning.py"
sys.path.insert(0, str(_PATH.parent))  # it imports bench/robustness.py as a sibling
_spec = importlib.util.spec_from_file_location("bench_dyart_tuning", _PATH)
tuning = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tuning)


def test_a_variant_overrides_hparams_and_settings_and_nothing_else():
    name, overrides = tuning._overrides("alpha=0.5,iterations=20,lr=0.05")
    config = tuning.variant_config(name, overrides, epochs=2).to_dict()
    recipe = tuning.variant_config("recipe", {}, epochs=2).to_dict()
    assert (config["hparams"]["alpha"], config["hparams"]["iterations"]) == (0.5, 20)
    assert config["lr"] == 0.05 and config["epochs"] == 2 and config["eval_eps"] == []
    changed = {k for k in recipe if recipe[k] != config[k]}
    assert changed == {"hparams", "lr"}
    assert {k for k in recipe["hparams"] if recipe["hparams"][k] != config["hparams"][k]} == {
        "alpha",
        "iterations",
    }


def test_the_base_overrides_the_recipe_and_the_variant_overrides_the_base():
    base = tuning._overrides("lr=0.1,alpha=3.0,r0=0.6")
    recipe = tuning.variant_config("base", {}, epochs=2).to_dict()
    plain = tuning.variant_config("base", {}, epochs=2, base=base).to_dict()
    name, overrides = tuning._overrides("alpha=0.3")
    config = tuning.variant_config(name, overrides, epochs=2, base=base).to_dict()

    assert (plain["lr"], plain["hparams"]["alpha"], plain["hparams"]["r0"]) == (0.1, 3.0, 0.6)
    assert (config["lr"], config["hparams"]["alpha"], config["hparams"]["r0"]) == (0.1, 0.3, 0.6)
    assert {k for k in recipe if recipe[k] != plain[k]} <= {"hparams", "lr"}


def test_an_unknown_key_in_the_base_names_the_flag():
    with pytest.raises(SystemExit, match="--base lrr=0.1: 'lrr' is neither"):
        tuning.variant_config("base", {}, epochs=None, base=tuning._overrides("lrr=0.1"))


@pytest.mark.parametrize(
    ("text", "message"),
    [("alpha", "expected KEY=VALUE, got 'alpha'"), ("alpha=fast", "alpha: 'fast' is not a number")],
)
def test_a_malformed_variant_says_what_was_expected(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        tuning._overrides(text)


def test_an_unknown_key_names_the_variant_and_the_key():
    name, overrides = tuning._overrides("alhpa=0.3")
    with pytest.raises(SystemExit, match="--variant alhpa=0.3: 'alhpa' is neither"):
        tuning.variant_config(name, overrides, epochs=None)


def _ledger_with(path, digest: str, accs: dict[int, float]) -> None:
    """A ledger holding eps 0.3 chunks (start image -> robust accuracy) for ``digest``."""
    chunks = {}
    for start, acc in accs.items():
        key = f"standard/eps 0.3/images {start}-{start + 250}"
        per_attack = {"apgd-ce": acc, "apgd-t": acc, "fab-t": acc, "square": acc}
        chunks[key] = {"clean_acc": 0.98, "eps": 0.3, "n": 250, "robust_acc": acc,
                       "per_attack": per_attack, "seconds": 10.0}  # fmt: skip
    path.write_text(json.dumps({digest: {"method": "dyart recipe", "chunks": chunks}}))


def test_without_attack_the_columns_read_the_ledger_by_the_weights_digest(tmp_path):
    config = tuning.variant_config("recipe", {}, epochs=2)
    weights = tmp_path / "runs" / "recipe" / "model-best.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"stand-in weights: only their sha256 is read")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    ledger = tmp_path / "ledger.json"
    _ledger_with(ledger, digest, {s: 0.7 + s / 25000 for s in range(0, 2000, 250)})
    before = ledger.read_bytes()

    got = tuning.attack_variant("recipe", config, tmp_path / "runs", [0.3, 0.2], str(ledger), False)

    assert got[0.2] is None  # nothing at eps 0.2, and nothing attacked for it
    assert got[0.3]["n"] == 2000
    assert got[0.3]["robust_acc"] == pytest.approx(0.7 + 875 / 25000)  # mean of the chunk accs
    assert ledger.read_bytes() == before
    assert not ledger.with_name("ledger.json.claims").exists()


def test_the_table_marks_partial_and_missing_autoattack_results(tmp_path):
    config = tuning.variant_config("recipe", {}, epochs=2)
    epochs = [
        {"epoch": 1, "val_pgd_acc": 0.5, "val_clean_acc": 0.96, "frac_kept": 0.8,
         "margin_q50": 0.25, "seconds": 50.0},
        {"epoch": 2, "val_pgd_acc": 0.7, "val_clean_acc": 0.97, "frac_kept": 0.4,
         "margin_q50": 0.3, "seconds": 48.0},
    ]  # fmt: skip
    full = {"n": 2000, "robust_acc": 0.7456}
    partial = {"n": 500, "robust_acc": 0.75}
    attacked = {"recipe": {0.3: full, 0.2: None}, "alpha=0.3": {0.3: partial, 0.2: None}}
    out = tmp_path / "table.md"
    collapsed = [{**e, "frac_kept": 0.0, "margin_q50": None} for e in epochs]  # nothing kept
    variants = [
        ("recipe", config, epochs),
        ("alpha=0.3", config, epochs),
        ("lr=0.2", config, collapsed),
    ]
    tuning.write_table(
        str(out), variants, "cmd", attacked, (0.3, 0.2), tuning._overrides("lr=0.05")
    )
    text = out.read_text()
    assert text.startswith(
        "# DyART settings on MNIST-10k (validation screen, base: the recipe with"
    )
    assert "Base (the recipe with lr=0.05):" in text
    assert '"lr": 0.05,' in text  # the base's settings, not the first variant's
    assert "| fastest epoch (s) | AA acc @ 0.3 | AA acc @ 0.2 |" in text
    assert "| recipe | 0.500 0.700 | 0.700 | 0.970 | 0.40 | 0.300 | 48.0 | 0.746 | — |" in text
    assert (
        "| alpha=0.3 | 0.500 0.700 | 0.700 | 0.970 | 0.40 | 0.300 | 48.0 | 0.750 (500) | — |"
        in text
    )
    assert "| lr=0.2 | 0.500 0.700 | 0.700 | 0.970 | 0.00 | — | 48.0 | — | — |" in text
