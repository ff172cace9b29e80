"""The catalog: defaults per dataset, validation messages naming the field."""

import math

import pytest

from dyart import catalog
from dyart.config import TrainConfig
from dyart.errors import ConfigErrors

BASE = {"dataset": "mnist10k", "architecture": "small_cnn", "method": "dyart"}


def test_eps_scaled_defaults_follow_the_dataset():
    mnist = catalog.method_defaults("dyart", "mnist10k")
    cifar = catalog.method_defaults("dyart", "cifar10")
    assert mnist["r0"] == pytest.approx(0.6)  # 2 x eps 0.3
    assert cifar["r0"] == pytest.approx(16 / 255)  # the paper's r0
    assert cifar["eps_fab"] == pytest.approx(8 / 255)
    assert catalog.method_defaults("pgd_at", "cifar10")["step_size"] == pytest.approx(2 / 255)


def test_validate_job_fills_every_default():
    resolved, errors = catalog.validate_job(BASE)
    assert errors == []
    assert set(catalog.TRAIN_PARAMS) <= set(resolved)
    assert resolved["eval_eps"] == [0.1, 0.2, 0.3]
    assert resolved["hparams"]["temperature"] == 5.0


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"epochs": 0}, "epochs", "epochs: 0 is below the minimum 1"),
        ({"lr": "fast"}, "lr", "lr: expected a number, got 'fast'"),
        ({"batch_size": 2.5}, "batch_size", "batch_size: expected an integer, got 2.5"),
        ({"schedule": "linear"}, "schedule", "schedule: 'linear' is not one of"),
        ({"eval_eps": [0.1, 2]}, "eval_eps", "eval_eps[1]: 2.0 is above the maximum 1.0"),
        (
            {"eval_eps": [0.1, 0.3, 0.1000000001]},
            "eval_eps",
            "eval_eps[2]: 0.1 is given twice (as 0.1); list each value once",
        ),
        ({"hparams": {"r0": -1}}, "hparams.r0", "hparams.r0: -1.0 is below the minimum 0.0"),
        ({"hparams": {"beta": 6}}, "hparams.beta", "method 'dyart' has no hyperparameter 'beta'"),
        ({"dataset": "imagenet"}, "dataset", "'imagenet' is not one of mnist10k"),
        ({"colour": "red"}, "colour", "unknown field 'colour'"),
        (
            {"eval_eps": [0.01] * 21},
            "eval_eps",
            "eval_eps: at most 20 values are allowed, got 21",
        ),
        ({"val_size": 8000}, "val_size", "8000 leaves no training images: mnist10k has 8000"),
        (
            {"val_size": 7000, "batch_size": 1024},
            "batch_size",
            "1024 is more than the 1000 training images left after val_size 7000 on mnist10k",
        ),
        ({"hparams": {"norm": "l2"}}, "hparams.norm", "hparams.norm: 'l2' is not one of linf"),
        (
            {"epochs": 2, "schedule": "onecycle"},
            "schedule",
            "onecycle is stepped once per epoch and needs at least 3 epochs (got 2)",
        ),
        (
            {"dataset": "digits", "architecture": "wide_resnet_28_10"},
            "architecture",
            "architecture 'wide_resnet_28_10' needs images of at least 16x16; "
            "dataset 'digits' has 8x8",
        ),
    ],
)
def test_validate_job_names_the_field(change, field, message):
    _, errors = catalog.validate_job({**BASE, **change})
    assert [f for f, _ in errors] == [field]
    assert message in errors[0][1]


def test_dataset_not_on_disk_names_the_files(tmp_path):
    _, errors = catalog.validate_job({**BASE, "dataset": "cifar10"}, data_dir=tmp_path)
    assert errors[0][0] == "dataset"
    assert "cifar-10-batches-py/data_batch_1" in errors[0][1]
    assert str(tmp_path) in errors[0][1]


def test_bundled_dataset_needs_no_files(tmp_path):
    assert catalog.validate_job(BASE, data_dir=tmp_path)[1] == []


def test_train_config_round_trips_and_validates():
    config = TrainConfig.from_dict({**BASE, "epochs": 3, "hparams": {"iterations": 5}})
    assert config.epochs == 3 and config.hparams["iterations"] == 5
    assert TrainConfig.from_dict(config.to_dict()) == config
    config.epochs = -1
    with pytest.raises(ConfigErrors, match="epochs: -1 is below the minimum 1"):
        config.validate()


def test_train_config_from_yaml_with_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("dataset: digits\narchitecture: mlp\nmethod: trades\nhparams: {beta: 3}\n")
    config = TrainConfig.from_file(path, epochs=4, hparams={"steps": 4})
    assert (config.epochs, config.hparams["beta"], config.hparams["steps"]) == (4, 3.0, 4)


def test_public_catalog_is_json_ready():
    import json

    text = json.dumps(catalog.public_catalog())
    assert '"dyart"' in text and '"wide_resnet_28_10_silu"' in text


def test_non_finite_numbers_are_refused_for_every_numeric_field():
    spec = {"dataset": "digits", "architecture": "mlp", "method": "dyart"}
    for field, value in [("epochs", math.inf), ("lr", math.nan), ("batch_size", -math.inf)]:
        _, errors = catalog.validate_job({**spec, field: value})
        assert errors == [(field, f"{field}: expected a finite number, got {value!r}")]
    _, errors = catalog.validate_job({**spec, "hparams": {"iterations": math.inf}})
    assert errors == [
        ("hparams.iterations", "hparams.iterations: expected a finite number, got inf")
    ]


def test_validation_part_defaults_to_the_datasets_own_size():
    sizes = {}
    for name in ("mnist10k", "digits", "synthetic"):
        spec = {**BASE, "dataset": name, "architecture": "mlp"}
        resolved, errors = catalog.validate_job(spec)
        assert errors == []
        sizes[name] = resolved["val_size"]
    assert sizes == {"mnist10k": 1024, "digits": 256, "synthetic": 64}


def test_generated_data_is_required_at_submission_when_asked_for(tmp_path):
    spec = {**BASE, "extra_data_frac": 0.3}
    _, errors = catalog.validate_job(spec, data_dir=tmp_path)
    assert [f for f, _ in errors] == ["extra_data_frac"]
    assert str(tmp_path / "generated" / "mnist10k.npz") in errors[0][1]
    (tmp_path / "generated").mkdir()
    (tmp_path / "generated" / "mnist10k.npz").write_bytes(b"")
    assert catalog.validate_job(spec, data_dir=tmp_path)[1] == []


def test_a_stored_job_config_is_not_held_to_rules_added_for_new_submissions(tmp_path):
    """A worker starts, resumes and evaluates jobs accepted earlier: an upgrade that adds
    a submission rule must not fail them."""
    stored = {**BASE, "epochs": 2, "schedule": "onecycle", "extra_data_frac": 0.3}
    _, errors = catalog.validate_job(stored, data_dir=tmp_path)
    assert {f for f, _ in errors} == {"schedule", "extra_data_frac"}
    assert catalog.validate_job(stored, data_dir=tmp_path, stored=True)[1] == []
    config = TrainConfig.from_dict(stored, tmp_path, stored=True)
    assert (config.epochs, config.schedule) == (2, "onecycle")
    _, errors = catalog.validate_job({**stored, "epochs": 0}, stored=True)
    assert [f for f, _ in errors] == ["epochs"]  # each field's own range still holds


@pytest.mark.parametrize(
    ("dataset", "preset", "n", "grade"),
    [
        ("digits", "standard", 360, True),  # the whole published test set
        ("digits", "standard", 359, False),
        ("digits", "fast", 360, False),
        ("mnist10k", "standard", 2000, True),
        ("cifar10", "custom", 10000, False),
        ("synthetic", "standard", 128, False),  # no published test set: never
        ("unknown", "standard", 10**6, False),
    ],
)
def test_only_standard_on_the_whole_published_test_set_is_leaderboard_grade(
    dataset, preset, n, grade
):
    assert catalog.leaderboard_grade(dataset, preset, n) is grade


def test_the_catalog_says_each_datasets_test_set_size():
    sizes = {d["name"]: d["test_size"] for d in catalog.public_catalog()["datasets"]}
    assert sizes["digits"] == 360 and sizes["mnist10k"] == 2000 and sizes["svhn"] == 26032
    assert sizes["synthetic"] is None


def test_a_stored_config_gets_the_defaults_of_settings_added_since():
    """A run stored before a setting existed ran with its default, method settings too."""
    current = TrainConfig.from_dict(
        {"dataset": "mnist10k", "architecture": "small_cnn", "method": "dyart"}
    ).to_dict()
    older = {k: v for k, v in current.items() if k != "grad_clip"}
    older["hparams"] = {k: v for k, v in current["hparams"].items() if k != "fused_check"}
    older["hparams"]["iterations"] = 7  # what the older run chose stays
    filled = catalog.with_new_defaults(older)
    assert filled["grad_clip"] == current["grad_clip"]
    assert filled["hparams"] == {**current["hparams"], "iterations": 7}
    assert filled["hparams"]["fused_check"] is False
    # an unknown method or dataset keeps its hyperparameters as they were stored
    odd = {**older, "method": "retired"}
    assert catalog.with_new_defaults(odd)["hparams"] == older["hparams"]
