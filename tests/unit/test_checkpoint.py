"""User-facing checkpoints (safetensors + model card) and the internal training state."""

import json
import random

import numpy as np
import pytest
import torch

import dyart
from dyart import checkpoint
from dyart.errors import CheckpointError
from dyart.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


SPEC = {
    "name": "small_cnn",
    "num_classes": 4,
    "in_channels": 1,
    "image_size": 8,
    "norm_layer": "bn",
    "mean": [0.5],
    "std": [0.25],
}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    spec = dict(SPEC)
    model = build_model(spec.pop("name"), **spec)
    model.train()(torch.rand(16, 1, 8, 8))  # move the BN statistics off their defaults
    return model.eval()


def _save(tmp_path, model=None):
    model = model or _model()
    card = {"build_model": SPEC, "dataset": "synthetic", "architecture": "small_cnn"}
    return model, *checkpoint.save_model(tmp_path / "model-best.safetensors", model, card)


def test_load_model_round_trip_gives_identical_outputs(tmp_path):
    model, weights, card_path = _save(tmp_path)
    x = torch.rand(8, 1, 8, 8)
    for path in (weights, card_path):
        loaded = dyart.load_model(path)
        assert not loaded.training
        assert torch.equal(loaded(x), model(x))
    card = json.loads(card_path.read_text())
    assert card["sha256"] == checkpoint.file_sha256(weights)
    assert card["weights"] == weights.name
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_the_same_weights_always_give_the_same_file(tmp_path):
    """Byte for byte, so a file's sha256 names its weights (safetensors alone writes
    its two metadata keys in an order that changes from one save to the next)."""
    model = _model()
    digests = set()
    for attempt in range(12):
        (tmp_path / str(attempt)).mkdir()
        _, weights, card_path = _save(tmp_path / str(attempt), model)
        digests.add(checkpoint.file_sha256(weights))
        assert json.loads(card_path.read_text())["sha256"] == checkpoint.file_sha256(weights)
    assert len(digests) == 1
    header = weights.read_bytes()[8 : 8 + int.from_bytes(weights.read_bytes()[:8], "little")]
    assert header.startswith(b'{"__metadata__":{"card":"dyart-model-card/1","format":"pt"},')
    assert torch.equal(
        dyart.load_model(weights)(torch.ones(2, 1, 8, 8)), model(torch.ones(2, 1, 8, 8))
    )


def test_load_model_refuses_a_missing_card(tmp_path):
    _, weights, card_path = _save(tmp_path)
    card_path.unlink()
    expected = r"model card .* does not exist; a model is its .safetensors file and its .json"
    with pytest.raises(CheckpointError, match=expected):
        dyart.load_model(weights)


def test_load_model_refuses_a_wrong_sha256(tmp_path):
    _, weights, _ = _save(tmp_path)
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="sha256"):
        dyart.load_model(weights)


def test_load_model_refuses_a_file_that_is_not_safetensors(tmp_path):
    _, weights, card_path = _save(tmp_path)
    weights.write_bytes(b"\x80\x04 a pickle, perhaps")
    card = json.loads(card_path.read_text())
    card["sha256"] = checkpoint.file_sha256(weights)
    card_path.write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        dyart.load_model(weights)


def test_load_model_refuses_weights_of_another_architecture(tmp_path):
    _, weights, card_path = _save(tmp_path)
    card = json.loads(card_path.read_text())
    card["build_model"] = {**SPEC, "name": "mlp"}
    card_path.write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="does not match architecture 'mlp'"):
        dyart.load_model(card_path)


def _rewrite_card(card_path, **fields):
    card = json.loads(card_path.read_text())
    card.update(fields)
    card_path.write_text(json.dumps(card))


@pytest.mark.parametrize("where", ["../elsewhere/model-best.safetensors", "ABSOLUTE"])
def test_load_model_refuses_a_card_whose_weights_are_not_beside_it(tmp_path, where):
    """A card names a file in its own folder; a path would load weights from anywhere."""
    (tmp_path / "elsewhere").mkdir()
    _, weights, _ = _save(tmp_path / "elsewhere")
    (tmp_path / "here").mkdir()
    _, _, card_path = _save(tmp_path / "here")
    where = str(weights) if where == "ABSOLUTE" else where
    _rewrite_card(card_path, weights=where)
    with pytest.raises(CheckpointError, match=rf"{card_path.name}: weights: expected a file name"):
        dyart.load_model(card_path)


@pytest.mark.parametrize("text", ["5", "null", '"a card"', "[1, 2]"])
def test_load_model_refuses_a_card_that_is_not_a_json_object(tmp_path, text):
    _, weights, card_path = _save(tmp_path)
    card_path.write_text(text)
    with pytest.raises(CheckpointError, match=rf"{card_path.name} is not a model card"):
        dyart.load_model(weights)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"build_model": {k: v for k, v in SPEC.items() if k != "name"}}, "build_model.name"),
        ({"build_model": "small_cnn"}, "build_model: expected an object, got str"),
        ({"build_model": {**SPEC, "dropout": 0.5}}, "build_model: cannot build 'small_cnn'"),
        ({"build_model": {**SPEC, "num_classes": "four"}}, "build_model: cannot build"),
        ({"build_model": {**SPEC, "name": "vgg16"}}, "build_model: cannot build 'vgg16'"),
        ({"sha256": 5}, "sha256: expected a hex string"),
        ({"weights": ["model-best.safetensors"]}, "weights: expected a file name"),
        ({"weights": None}, "weights: expected a file name"),
    ],
)
def test_load_model_names_the_card_and_field_of_a_malformed_card(tmp_path, fields, message):
    _, weights, card_path = _save(tmp_path)
    _rewrite_card(card_path, **fields)
    for path in (weights, card_path):
        with pytest.raises(CheckpointError, match=rf"model card .*{card_path.name}: {message}"):
            dyart.load_model(path)


def test_update_card_adds_results(tmp_path):
    _, _, card_path = _save(tmp_path)
    checkpoint.update_card(card_path, autoattack={"preset": "fast"})
    assert checkpoint.read_card(card_path)["autoattack"] == {"preset": "fast"}


def test_training_state_loads_with_weights_only(tmp_path):
    path = checkpoint.save_training_state(
        tmp_path / "state" / "latest.pt", {"format": "x", "w": torch.ones(3), "rng": {"a": 1}}
    )
    state = checkpoint.load_training_state(path)
    assert torch.equal(state["w"], torch.ones(3))


class _Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_training_state_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "x", "payload": _Payload()}, path)
    with pytest.raises(CheckpointError, match="not a readable training state"):
        checkpoint.load_training_state(path)


def test_training_state_refuses_a_missing_or_foreign_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load_training_state(tmp_path / "nope.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a dyart training state"):
        checkpoint.load_training_state(tmp_path / "other.pt")


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.standard_normal()  # sets numpy's cached gaussian
    saved = checkpoint.capture_rng()
    checkpoint.save_training_state(tmp_path / "s.pt", {"format": "x", "rng": saved})
    first = (torch.rand(3), np.random.standard_normal(3), random.random())
    checkpoint.restore_rng(checkpoint.load_training_state(tmp_path / "s.pt")["rng"])
    again = (torch.rand(3), np.random.standard_normal(3), random.random())
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1]) and first[2] == again[2]
