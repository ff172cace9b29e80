"""RobustBench export: the state dict, its constructor arguments and the model entry."""

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dyart import catalog
from dyart.config import TrainConfig
from dyart.models import build_model, robustbench
from dyart.train import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

# RobustBench's model_info/<dataset>/<threat model>/*.json keys, in its order
MODEL_INFO_KEYS = [
    "link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
    "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "footnote", "unreliable",
]  # fmt: skip


# --- a stand-in for RobustBench's DMWideResNet (robustbench/model_zoo/architectures/
# dm_wide_resnet.py), written to its behaviour: the same module names, mean/std as
# plain attributes defaulting to CIFAR-10's, SAME padding done by hand with a fixed
# (0, 1, 0, 1) at stride 2, and a fixed 8x8 average pool before the classifier.


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


ACTIVATIONS = {"Swish": Swish, "ReLU": nn.ReLU}


class _RBBlock(nn.Module):
    def __init__(self, cin, cout, stride, act):
        super().__init__()
        self.batchnorm_0, self.relu_0 = nn.BatchNorm2d(cin), act()
        self.conv_0 = nn.Conv2d(cin, cout, 3, stride, 0, bias=False)
        self.batchnorm_1, self.relu_1 = nn.BatchNorm2d(cout), act()
        self.conv_1 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.has_shortcut = cin != cout
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, 0, bias=False) if cin != cout else None
        self._stride = stride

    def forward(self, x):
        act = self.relu_0(self.batchnorm_0(x))
        if self.has_shortcut:
            x = act
        v = F.pad(act, (1, 1, 1, 1) if self._stride == 1 else (0, 1, 0, 1))
        out = self.conv_1(self.relu_1(self.batchnorm_1(self.conv_0(v))))
        return (self.shortcut(x) if self.has_shortcut else x) + out


class _RBGroup(nn.Module):
    def __init__(self, n, cin, cout, stride, act):
        super().__init__()
        self.block = nn.Sequential(
            *[
                _RBBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, act)
                for i in range(n)
            ]
        )

    def forward(self, x):
        return self.block(x)


class DMWideResNet(nn.Module):
    def __init__(
        self,
        num_classes=10,
        depth=28,
        width=10,
        activation_fn=nn.ReLU,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2471, 0.2435, 0.2616),
        padding=0,
        num_input_channels=3,
    ):
        super().__init__()
        self.padding = padding
        self.mean = torch.tensor(mean).view(num_input_channels, 1, 1)
        self.std = torch.tensor(std).view(num_input_channels, 1, 1)
        widths = [16, 16 * width, 32 * width, 64 * width]
        n = (depth - 4) // 6
        self.init_conv = nn.Conv2d(num_input_channels, 16, 3, 1, 1, bias=False)
        self.layer = nn.Sequential(
            *[
                _RBGroup(n, widths[g], widths[g + 1], 1 if g == 0 else 2, activation_fn)
                for g in range(3)
            ]
        )
        self.batchnorm, self.relu = nn.BatchNorm2d(widths[3]), activation_fn()
        self.logits = nn.Linear(widths[3], num_classes)
        self.num_channels = widths[3]

    def forward(self, x):
        if self.padding > 0:
            x = F.pad(x, (self.padding,) * 4)
        out = self.layer(self.init_conv((x - self.mean) / self.std))
        out = F.avg_pool2d(self.relu(self.batchnorm(out)), 8)
        return self.logits(out.view(-1, self.num_channels))


def _config(**changes) -> TrainConfig:
    spec = {
        "dataset": "cifar100",
        "architecture": "wide_resnet_16_4_silu",
        "method": "dyart",
        "eval_eps": [8 / 255],
    }
    return TrainConfig.from_dict({**spec, **changes})


def _cifar100_model() -> nn.Module:
    torch.manual_seed(0)
    card = catalog.DATASETS["cifar100"]
    model = build_model(
        "wide_resnet_16_4_silu", num_classes=100, in_channels=3, image_size=32,
        mean=card.mean, std=card.std,
    )  # fmt: skip
    for module in model.modules():  # BN statistics and affine terms off their defaults
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
    return model.eval()


def _result(grade: bool, n: int, norm: str = "linf") -> dict:
    row = {"eps": 8 / 255, "clean_acc": 0.6123, "robust_acc": 0.3012, "per_attack": {}}
    return {
        "preset": "standard",
        "n": n,
        "norm": norm,
        "leaderboard_grade": grade,
        "results": [row],
    }


def test_robustbench_class_built_from_the_entry_gives_the_same_logits(tmp_path):
    model = _cifar100_model()
    path = robustbench.save(
        tmp_path / "model-best-robustbench.pt", model, robustbench.entry(_config(), model)
    )
    entry = json.loads(path.with_suffix(".entry.json").read_text())
    args = dict(entry["model_args"])
    assert args == {
        "num_classes": 100, "depth": 16, "width": 4, "activation_fn": "Swish",
        "mean": [0.5071, 0.4865, 0.4409], "std": [0.2673, 0.2564, 0.2762],
        "num_input_channels": 3,
    }  # fmt: skip
    theirs = DMWideResNet(**{**args, "activation_fn": ACTIVATIONS[args["activation_fn"]]})
    theirs.load_state_dict(torch.load(path, weights_only=True), strict=True)
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(theirs.eval()(x), model(x), rtol=1e-5, atol=1e-5)
        # what the entry saves a user from: RobustBench's CIFAR-10 defaults
        defaults = DMWideResNet(num_classes=100, depth=16, width=4, activation_fn=Swish)
        defaults.load_state_dict(torch.load(path, weights_only=True))
        assert (defaults.eval()(x) - model(x)).abs().max() > 1e-4


def test_entry_follows_robustbench_model_info_and_names_the_method():
    model = _cifar100_model()
    entry = robustbench.entry(_config(method="trades", extra_data_frac=0.5), model)
    assert list(entry)[: len(MODEL_INFO_KEYS)] == MODEL_INFO_KEYS
    assert entry["name"] == "Theoretically Principled Trade-off between Robustness and Accuracy"
    assert entry["link"] == "https://arxiv.org/abs/1901.08573"
    assert entry["authors"].startswith("Hongyang Zhang") and entry["venue"] == "ICML 2019"
    assert entry["method"] == "trades" and "DyART" not in json.dumps(entry)
    assert entry["architecture"] == "WideResNet-16-4" and entry["dataset"] == "cifar100"
    assert entry["eps"] == "8/255" and entry["threat_model"] == "Linf"
    # generated images are not additional data on RobustBench: a footnote says so
    assert entry["additional_data"] is False and "synthetic images" in entry["footnote"]
    assert entry["clean_acc"] is entry["autoattack_acc"] is entry["reported"] is None
    assert entry["unreliable"] is False
    for method in ("pgd_at", "mart", "dyart"):
        card = catalog.METHODS[method]
        assert robustbench.entry(_config(method=method), model)["name"] == card.paper_title


def test_entry_threat_model_comes_from_the_config():
    model = _cifar100_model()
    config = _config(dataset="cifar10")
    config = dataclasses.replace(config, hparams={**config.hparams, "norm": "l2"})
    entry = robustbench.entry(config, model)
    assert entry["threat_model"] == "L2" and entry["eps"] == f"{8 / 255:g}"
    # an L-inf evaluation does not fill an L2 entry
    filled = robustbench.with_results(entry, config, _result(True, 10000))
    assert filled["autoattack_acc"] is None and "ran in Linf" in filled["footnote"]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"norm_layer": "gn"}, "BatchNorm only"),
        ({"dataset": "svhn"}, "dataset 'svhn'"),
        ({"dataset": "tiny_imagenet"}, "dataset 'tiny_imagenet'"),
        ({"architecture": "wide_resnet_28_10"}, "not a WideResNet-SiLU"),
    ],
)
def test_only_models_robustbench_loads_are_exported(changes, reason):
    assert (
        robustbench.fits(_config()) is None and robustbench.fits(_config(dataset="cifar10")) is None
    )
    assert reason in robustbench.fits(_config(**changes))


def test_a_model_robustbench_cannot_load_gets_no_robustbench_files(tmp_path):
    """8x8 images: RobustBench's fixed 8x8 pool would not see what the model sees."""
    config = TrainConfig.from_dict({
        "dataset": "synthetic", "architecture": "wide_resnet_16_4_silu", "method": "clean",
        "epochs": 1, "schedule": "cosine", "burn_in_epochs": 1, "batch_size": 64, "val_size": 64,
        "val_pgd_steps": 1, "eval_eps": [],
    })  # fmt: skip
    Trainer(config, tmp_path, device="cpu").run()
    assert (tmp_path / "model-final.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.glob("*robustbench*")) == []


def _trainer_entry(tmp_path, config, result):
    """Run the trainer's entry update on a saved entry; return what it leaves."""
    model = _cifar100_model()
    path = robustbench.save(
        tmp_path / "model-best-robustbench.pt", model, robustbench.entry(config, model)
    )
    trainer = SimpleNamespace(
        out_dir=tmp_path, config=config, data=SimpleNamespace(card=config.dataset_card)
    )
    Trainer._fill_robustbench_entry(trainer, "best", result)
    return json.loads(path.with_suffix(".entry.json").read_text())


def test_a_standard_run_on_part_of_the_test_set_leaves_the_numbers_null(tmp_path):
    entry = _trainer_entry(tmp_path, _config(), _result(grade=False, n=1000))
    assert entry["clean_acc"] is entry["autoattack_acc"] is entry["reported"] is None
    assert "standard preset on 1000 test images" in entry["footnote"]
    assert entry["file"] == "model-best-robustbench.pt" and len(entry["sha256"]) == 64


def test_a_leaderboard_grade_run_fills_the_numbers(tmp_path):
    entry = _trainer_entry(tmp_path, _config(), _result(grade=True, n=10000))
    assert (entry["clean_acc"], entry["autoattack_acc"], entry["reported"]) == (
        "61.23", "30.12", "30.12",
    )  # fmt: skip
    assert entry["footnote"] == "" and list(entry)[: len(MODEL_INFO_KEYS)] == MODEL_INFO_KEYS


def test_a_result_that_drew_a_warning_is_marked_unreliable(tmp_path):
    """Zero input gradients (gradient masking) before the attacks: the numbers are kept,
    the entry says unreliable and its footnote quotes the warning."""
    warning = "some inputs have a zero gradient of the logit margin"
    result = {**_result(grade=True, n=10000), "warnings": [warning]}
    entry = _trainer_entry(tmp_path, _config(), result)
    assert entry["unreliable"] is True and entry["autoattack_acc"] == "30.12"
    assert entry["footnote"] == f"Before the attacks the evaluation warned: {warning}."
    assert list(entry)[: len(MODEL_INFO_KEYS)] == MODEL_INFO_KEYS
    sound = _trainer_entry(tmp_path, _config(), {**result, "warnings": []})
    assert sound["unreliable"] is False and sound["footnote"] == ""
