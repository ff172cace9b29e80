"""bench/dyart_tuning.py: variants override the DyART recipe, and bad ones are named."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "dyart_tuning.py"
sys.path.insert(0, str(_PATH.parent))  # it imports bench/robustness.py as a sibling
_spec = importlib.util.spec_from_file_location("bench_dyart_tuning", _PATH)
tuning = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tuning)


def test_a_variant_overrides_hparams_and_settings_and_nothing_else():
    name, overrides = tuning._overrides("alpha=0.3,iterations=20,lr=0.05")
    config = tuning.variant_config(name, overrides, epochs=2).to_dict()
    recipe = tuning.variant_config("recipe", {}, epochs=2).to_dict()
    assert (config["hparams"]["alpha"], config["hparams"]["iterations"]) == (0.3, 20)
    assert config["lr"] == 0.05 and config["epochs"] == 2 and config["eval_eps"] == []
    changed = {k for k in recipe if recipe[k] != config[k]}
    assert changed == {"hparams", "lr"}
    assert {k for k in recipe["hparams"] if recipe["hparams"][k] != config["hparams"][k]} == {
        "alpha",
        "iterations",
    }


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
