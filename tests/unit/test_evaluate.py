"""Clean, PGD and AutoAttack evaluation: result structure, ordering, resume, warnings."""

import json

import pytest
import torch
from torch import nn

from dyart import evaluate
from dyart.data import load_dataset
from dyart.errors import StopRequested
from dyart.evaluate import (
    EvaluationWarning,
    autoattack_eval,
    check_model,
    clean_accuracy,
    pgd_accuracy,
)
from dyart.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained():
    """A small model fitted for a few hundred steps on the synthetic set, and test images."""
    data = load_dataset("synthetic", val_size=0)
    card = data.card
    torch.manual_seed(0)
    model = build_model(
        "mlp", num_classes=card.num_classes, in_channels=card.channels,
        image_size=card.image_size, mean=list(card.mean), std=list(card.std),
    )  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = data.train_x.float() / 255, data.train_y
    model.train()
    for i in range(150):
        idx = torch.arange(i * 64, (i + 1) * 64) % len(x)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, data.test_x[:120].float() / 255, data.test_y[:120]


def test_pgd_accuracy_is_at_most_clean_and_zero_eps_changes_nothing(trained):
    model, x, y = trained
    clean = clean_accuracy(model, x, y)
    assert clean > 0.5
    assert pgd_accuracy(model, x, y, eps=0.0, steps=3) == pytest.approx(clean)
    assert pgd_accuracy(model, x, y, eps=0.3, steps=10) <= clean


def test_fast_preset_structure_and_ordering(trained):
    model, x, y = trained
    result = autoattack_eval(model, x, y, eps_list=[0.02, 0.3], preset="fast")
    assert (result["preset"], result["n"], result["norm"]) == ("fast", 120, "linf")
    assert result["attacks"] == ["apgd-ce"]
    assert result["warnings"] == []  # a sound model in eval mode
    small, large = result["results"]
    for row in (small, large):
        assert set(row) == {"eps", "clean_acc", "robust_acc", "per_attack"}
        assert list(row["per_attack"]) == ["apgd-ce"]
        assert row["robust_acc"] == row["per_attack"]["apgd-ce"] <= row["clean_acc"]
    assert small["clean_acc"] == pytest.approx(clean_accuracy(model, x, y))
    assert large["robust_acc"] <= small["robust_acc"]


def test_custom_preset_runs_the_papers_attacks_in_order(trained):
    model, x, y = trained
    result = autoattack_eval(model, x[:10], y[:10], eps_list=[0.05], preset="custom")
    row = result["results"][0]
    assert list(row["per_attack"]) == ["apgd-ce", "apgd-t", "fab-t"]
    accs = [row["clean_acc"], *row["per_attack"].values()]
    assert accs == sorted(accs, reverse=True)  # each attack can only lower the accuracy
    assert row["robust_acc"] == row["per_attack"]["fab-t"]


def test_state_dir_resumes_without_repeating_finished_work(trained, tmp_path, monkeypatch):
    model, x, y = trained
    first = autoattack_eval(model, x, y, eps_list=[0.1], preset="fast", state_dir=tmp_path)
    assert (tmp_path / "eps_0.1" / "progress.json").is_file()
    attacks = []
    real = evaluate._run_attack
    monkeypatch.setattr(evaluate, "_run_attack", lambda *a: attacks.append(a[5]) or real(*a))
    again = autoattack_eval(model, x, y, eps_list=[0.1], preset="fast", state_dir=tmp_path)
    assert again["results"] == first["results"] and attacks == []


def test_saved_progress_of_another_model_or_preset_is_not_reused(trained, tmp_path):
    model, x, y = trained
    x, y = x[:12], y[:12]
    autoattack_eval(model, x, y, eps_list=[0.1], preset="fast", state_dir=tmp_path)
    torch.manual_seed(5)
    other = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 4)).eval()
    theirs = autoattack_eval(other, x, y, eps_list=[0.1], preset="fast", state_dir=tmp_path)
    assert theirs["results"][0]["clean_acc"] == pytest.approx(clean_accuracy(other, x, y))
    fresh = autoattack_eval(model, x, y, eps_list=[0.1], preset="custom")
    mixed = autoattack_eval(model, x, y, eps_list=[0.1], preset="custom", state_dir=tmp_path)
    assert mixed["results"] == fresh["results"]  # not the fast preset's apgd-ce figure
    progress = json.loads((tmp_path / "eps_0.1" / "progress.json").read_text())
    assert list(progress["per_attack"]) == ["apgd-ce", "apgd-t", "fab-t"]


def test_a_stop_request_is_honoured_between_attacks_and_the_rerun_finishes(trained, tmp_path):
    model, x, y = trained
    x, y = x[:10], y[:10]
    straight = autoattack_eval(model, x, y, eps_list=[0.05], preset="custom")
    asked = []

    def stop_after_one():
        asked.append(True)
        return len(asked) > 1  # the first attack runs, the second is refused

    with pytest.raises(StopRequested, match=r"at eps 0.05 before apgd-t .*done at this eps: apgd"):
        autoattack_eval(
            model, x, y, eps_list=[0.05], preset="custom", state_dir=tmp_path,
            should_stop=stop_after_one,
        )  # fmt: skip
    progress = json.loads((tmp_path / "eps_0.05" / "progress.json").read_text())
    assert list(progress["per_attack"]) == ["apgd-ce"]
    resumed = autoattack_eval(
        model, x, y, eps_list=[0.05], preset="custom", state_dir=tmp_path, should_stop=lambda: False
    )
    assert resumed["results"] == straight["results"]


def test_unknown_preset_is_refused(trained):
    model, x, y = trained
    with pytest.raises(ValueError, match="preset"):
        autoattack_eval(model, x, y, eps_list=[0.1], preset="quick")


def test_warns_about_a_model_in_train_mode(trained):
    model, x, y = trained
    model.train()
    try:
        with pytest.warns(EvaluationWarning, match=r"train mode: call model.eval\(\)"):
            check_model(model, x, y)
    finally:
        model.eval()


def test_warns_about_probabilities_instead_of_logits(trained):
    model, x, y = trained
    softmaxed = nn.Sequential(model, nn.Softmax(dim=1)).eval()
    with pytest.warns(EvaluationWarning, match="look like probabilities.*return logits"):
        check_model(softmaxed, x, y)


def test_warns_about_zero_input_gradients(trained):
    _, x, y = trained
    flat = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 4)).eval()
    with torch.no_grad():
        flat[1].weight.zero_()
    with pytest.warns(EvaluationWarning, match="zero gradient of the logit margin"):
        check_model(flat, x, y)
    # and the result says so beside its numbers, for whoever reads only the JSON
    with pytest.warns(EvaluationWarning):
        result = autoattack_eval(flat, x[:10], y[:10], eps_list=[0.1], preset="fast")
    [warning] = result["warnings"]
    assert "zero gradient of the logit margin" in warning


def test_a_sound_model_gets_no_warning(trained):
    model, x, y = trained
    assert check_model(model, x, y) == []
