"""POST /jobs refuses every bad field at the door with a 422 naming it (DESIGN.md §5)."""

import pytest

from dyart import catalog

GOOD = {"dataset": "digits", "architecture": "mlp", "method": "dyart"}


def _out_of_range(param):
    """A value just outside ``param``'s range and the exact message the API must give."""
    name = param.name
    if param.type == "bool":
        return "yes", f"{name}: expected true or false, got 'yes'"
    if param.type == "choice":
        return "nope", f"{name}: 'nope' is not one of {', '.join(param.choices)}"
    if param.type == "float_list":
        return [0.1, 2.0], f"{name}[1]: 2.0 is above the maximum {param.max}"
    if param.type == "int":
        return int(param.max) + 1, f"{name}: {int(param.max) + 1} is above the maximum {param.max}"
    if param.min is not None and param.min > 0:
        value = param.min / 2
        return value, f"{name}: {value} is below the minimum {param.min}"
    return -1.0, f"{name}: -1.0 is below the minimum {param.min}"


def _errors(response):
    assert response.status_code == 422, response.text
    return {(e["field"], e["message"]) for e in response.json()["detail"]}


@pytest.mark.parametrize("name", list(catalog.TRAIN_PARAMS))
def test_create_job_rejects_train_param_out_of_range(client, name):
    value, message = _out_of_range(catalog.TRAIN_PARAMS[name])
    response = client().post("/api/v1/jobs", json={**GOOD, name: value})
    assert _errors(response) == {(name, message)}


@pytest.mark.parametrize(
    ("method", "hparam", "value", "message"),
    [
        ("clean", "label_smoothing", 0.6, "hparams.label_smoothing: 0.6 is above the maximum 0.5"),
        ("dyart", "r0", 5.0, "hparams.r0: 5.0 is above the maximum 4.0"),
        ("dyart", "iterations", 0, "hparams.iterations: 0 is below the minimum 1"),
        ("dyart", "norm", "l2", "hparams.norm: 'l2' is not one of linf"),
        ("pgd_at", "steps", 201, "hparams.steps: 201 is above the maximum 200"),
        ("trades", "beta", -1, "hparams.beta: -1.0 is below the minimum 0.0"),
        ("mart", "eps", 1.5, "hparams.eps: 1.5 is above the maximum 1.0"),
    ],
)
def test_create_job_rejects_hparam_out_of_range(client, method, hparam, value, message):
    body = {**GOOD, "method": method, "hparams": {hparam: value}}
    response = client().post("/api/v1/jobs", json=body)
    assert _errors(response) == {(f"hparams.{hparam}", message)}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("dataset", "imagenet", "'imagenet' is not one of " + ", ".join(catalog.DATASETS)),
        ("architecture", "vit", "'vit' is not one of " + ", ".join(catalog.ARCHITECTURES)),
        ("method", "fgsm", "'fgsm' is not one of " + ", ".join(catalog.METHODS)),
    ],
)
def test_create_job_rejects_unknown_names(client, field, value, message):
    response = client().post("/api/v1/jobs", json={**GOOD, field: value})
    assert _errors(response) == {(field, message)}


def test_create_job_rejects_unknown_hparam_and_field(client):
    body = {**GOOD, "hparams": {"gamma": 1.0}, "epochz": 3}
    allowed = ", ".join(p.name for p in catalog.METHODS["dyart"].params)
    assert _errors(client().post("/api/v1/jobs", json=body)) == {
        ("hparams.gamma", f"method 'dyart' has no hyperparameter 'gamma'; allowed: {allowed}"),
        ("epochz", "unknown field 'epochz'"),
    }


def test_create_job_rejects_architecture_too_big_for_images(client):
    body = {**GOOD, "architecture": "wide_resnet_28_10"}
    message = (
        "architecture 'wide_resnet_28_10' needs images of at least 16x16; dataset 'digits' has 8x8"
    )
    assert _errors(client().post("/api/v1/jobs", json=body)) == {("architecture", message)}


def test_create_job_names_missing_dataset_files(client, settings):
    body = {"dataset": "cifar10", "architecture": "preact_resnet18", "method": "dyart"}
    [(field, message)] = _errors(client().post("/api/v1/jobs", json=body))
    assert field == "dataset"
    assert "'cifar10' is not installed: expected cifar-10-batches-py/data_batch_1" in message
    assert (
        "cifar-10-batches-py/data_batch_1" in message
        and "cifar-10-batches-py/test_batch" in message
    )
    assert str(settings.data_dir) in message


def test_create_job_lists_every_bad_field_at_once(client):
    body = {**GOOD, "epochs": 0, "lr": 100.0, "hparams": {"eta": 3.0}}
    fields = {field for field, _ in _errors(client().post("/api/v1/jobs", json=body))}
    assert fields == {"epochs", "lr", "hparams.eta"}


def test_create_job_missing_required_and_bad_json(client):
    errors = dict(_errors(client().post("/api/v1/jobs", json={"method": "dyart"})))
    assert set(errors) == {"dataset", "architecture"}
    assert errors["dataset"] == "dataset: field required"
    response = client().post(
        "/api/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}
    )
    [(field, message)] = _errors(response)
    assert field == "body" and "not valid JSON" in message


def test_create_job_body_over_limit_is_413(client):
    body = {**GOOD, "name": "x" * (2 * 1024 * 1024)}
    response = client().post("/api/v1/jobs", json=body)
    assert response.status_code == 413
    assert "larger than the limit" in response.json()["detail"]


def test_create_evaluation_rejects_eps_out_of_range(client, make_job):
    job = make_job(client, status="succeeded")
    response = client().post(f"/api/v1/jobs/{job['id']}/evaluations", json={"eps": [1.5]})
    [(field, message)] = _errors(response)
    assert field == "eps.0" and "less than or equal to 1" in message


def test_thousands_of_bad_fields_get_a_bounded_answer(client):
    body = {"dataset": "digits", "architecture": "mlp", "method": "clean"}
    body.update({f"junk_{i}": 1 for i in range(5000)})
    response = client().post("/api/v1/jobs", json=body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert len(detail) == 51 and detail[0] == {
        "field": "junk_0",
        "message": "unknown field 'junk_0'",
    }
    assert detail[-1] == {
        "field": "body",
        "message": "body: 4950 more invalid fields not listed; fix the ones above first",
    }
    assert len(response.content) < 10_000


def test_create_job_rejects_more_eval_eps_than_an_evaluation_takes(client):
    twenty = [round(0.01 * (i + 1), 2) for i in range(20)]  # 20 distinct radii
    at_limit = client().post("/api/v1/jobs", json={**GOOD, "eval_eps": twenty})
    assert at_limit.status_code == 201 and len(at_limit.json()["config"]["eval_eps"]) == 20
    body = {**GOOD, "eval_eps": [0.1] * 100_000, "epochs": 0}
    response = client().post("/api/v1/jobs", json=body)
    assert _errors(response) == {
        ("eval_eps", "eval_eps: at most 20 values are allowed, got 100000"),
        ("epochs", "epochs: 0 is below the minimum 1"),
    }
    assert len(response.content) < 1000
    assert client().get("/api/v1/jobs").json()["total"] == 1


def test_job_schema_says_how_many_eval_eps_it_takes(app):
    schema = app.openapi()["components"]["schemas"]["JobCreate"]["properties"]["eval_eps"]
    assert schema["maxItems"] == 20
