"""The command line: one-line errors naming the field, a tiny train run, eval as JSON."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dyart.cli import main, recipes
from dyart.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--dataset", "synthetic", "--architecture", "mlp", "--method", "dyart",
    "--epochs", "1", "--burn-in-epochs", "1", "--batch-size", "64", "--schedule", "constant",
    "--val-size", "64", "--val-pgd-steps", "2", "--eval-eps", "0.1", "--eval-preset", "fast",
    "--eval-n", "40", "--hparam", "iterations=2", "--device", "cpu",
]  # fmt: skip


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", *TINY, "--epochs", "0"], "error: epochs: 0 is below the minimum 1"),
        (["train", *TINY, "--hparam", "r0=9"], "error: hparams.r0: 9.0 is above the maximum"),
        (["train", *TINY, "--hparam", "nonsense"], "error: hparam: expected KEY=VALUE"),
        (["train", *TINY, "--hparam", "depth=3"], "error: hparams.depth: method 'dyart' has no"),
        (["train", "--recipe", "cifar11"], "error: recipe: 'cifar11' is not one of"),
        (["train", "--config", "/nonexistent.yaml"], "error: config: config file"),
        (["train", *TINY, "--epochs", "many"], "error: --epochs: invalid int value: 'many'"),
        (["train", *TINY, "--schedule", "linear"], "error: --schedule: invalid choice"),
        (
            ["eval", "/nonexistent/model.safetensors"],
            "error: checkpoint: /nonexistent/model.safetensors does not exist",
        ),
        (["train", *TINY, "--device", "gpu0"], "error: device: 'gpu0' is not a device"),
        (["eval", "m.safetensors", "--device", "gpu0"], "error: device: 'gpu0' is not a device"),
        (["eval", "m.safetensors", "--batch-size", "0"], "error: batch-size: expected at least 1"),
        (["eval", "m.safetensors", "--device", "mps"], "error: device: 'mps' is not a device"),
        (["eval", "m.safetensors", "--device", "meta"], "error: device: 'meta' is not a device"),
        (["eval", "m.safetensors", "--eps", "0.1", "0.1"], "error: eps[1]: 0.1 is given twice"),
        (["eval", "m.safetensors", "--eps", "0"], "error: eps[0]: 0.0 must be above 0.0"),
        (["eval", "m.safetensors", "--eps", "1.5"], "error: eps[0]: 1.5 is above the maximum"),
        (["eval", "m.safetensors", "--eps", *["0.1"] * 21], "error: eps: at most 20 values"),
        (["train", *TINY, "--eval-eps", "0", "0.1"], "error: eval_eps[0]: 0.0 must be above 0.0"),
        (["eval", "/"], "error: checkpoint: / is a folder; give a model-<kind>.safetensors"),
        (
            ["eval", "m.safetensors", "--output", "/nonexistent/r.json"],
            "error: output: folder /nonexistent does not exist",
        ),
    ],
)
def test_bad_input_prints_one_line_naming_the_field_and_exits_2(argv, expected, capsys):
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(argv))
    assert exc.value.code == 2
    assert _error_line(capsys).startswith(expected)


def test_missing_dataset_is_one_line(tmp_path, capsys):
    argv = ["train", "--dataset", "cifar10", "--architecture", "small_cnn", "--method", "clean"]
    assert main([*argv, "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    line = _error_line(capsys)
    assert line.startswith("error: dataset:") and "cifar-10-batches-py" in line


def test_a_config_file_that_is_not_yaml_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: [unclosed\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert _error_line(capsys).startswith(f"error: config: cannot read {bad}")


@pytest.mark.parametrize("hparams", ["hparams:\n", "hparams: [1, 2]\n"])
def test_a_config_file_whose_hparams_are_not_a_mapping_is_named(tmp_path, capsys, hparams):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: synthetic\n" + hparams)
    assert main(["train", "--config", str(bad)]) == 2
    line = _error_line(capsys)
    if hparams == "hparams:\n":  # empty: no hyperparameters; the fields missing are named
        assert line.startswith("error: architecture: required: one of mlp")
        assert "; method: required: one of clean" in line
    else:
        assert line.startswith(f"error: hparams: {bad}: hparams must be a mapping")


def test_every_bundled_recipe_is_a_valid_config():
    assert {"cifar10_bn", "cifar10_gn", "cifar10_generated", "mnist10k_dyart"} <= set(recipes())
    assert {"tiny_imagenet_bn", "tiny_imagenet_gn", "digits_dyart"} <= set(recipes())
    for name in recipes():
        TrainConfig.from_file(ROOT / "dyart" / "configs" / f"{name}.yaml")


def test_train_then_eval_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"checkpoint: {out / 'model-best.safetensors'}" in printed
    assert f"model card: {out / 'model-best.json'}" in printed
    assert f"results:    {out / 'results.json'}" in printed
    assert json.loads((out / "results.json").read_text())["n"] == 40
    assert (
        "AutoAttack: preset fast, 40 test images, linf, checkpoint best (a quick evaluation, "
        "not a leaderboard figure" in printed
    )
    argv = ["eval", str(out / "model-best.safetensors"), "--eps", "0.05", "0.1"]
    assert main([*argv, "--preset", "fast", "--n", "30", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 30 and [r["eps"] for r in result["results"]] == [0.05, 0.1]
    assert result["dataset"] == "synthetic" and result["leaderboard_grade"] is False
    card = json.loads((out / "model-best.json").read_text())
    assert (result["sha256"], result["epoch"]) == (card["sha256"], card["epoch"])
    assert result["stage"] == "train"
    for broken, said in ((None, "names no dataset"), ("mnist11", "names dataset 'mnist11'")):
        card["dataset"] = broken
        (out / "model-best.json").write_text(json.dumps(card))
        assert main([*argv, "--device", "cpu"]) == 2
        assert _error_line(capsys).startswith(
            f"error: checkpoint: the model card of {out / 'model-best.safetensors'} {said}: "
            "its field dataset should be one of"
        )


def test_console_script_error_has_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "dyart.cli", "train", *TINY, "--lr", "-1"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: lr: -1.0 is below the minimum 1e-06"


def test_numbers_without_a_dot_are_numbers_in_config_files_and_hparams(tmp_path):
    from dyart.cli import build_parser, load_config

    path = tmp_path / "run.yaml"
    path.write_text(
        "dataset: synthetic\narchitecture: mlp\nmethod: dyart\n"
        "lr: 1e-2\nweight_decay: 5e-4\nhparams:\n  lam_robust: 1e3\n"
    )
    args = build_parser().parse_args(["train", "--config", str(path), "--hparam", "eta=11e-1"])
    config = load_config(args)
    assert (config.lr, config.weight_decay) == (0.01, 0.0005)
    assert config.hparams["lam_robust"] == 1000.0 and config.hparams["eta"] == 1.1


def test_an_out_or_state_dir_that_cannot_be_written_is_refused_up_front(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    cases = [
        (["train", *TINY, "--out", str(a_file)], f"error: out: {a_file} is a file, not a folder"),
        (["train", *TINY, "--out", str(a_file / "run")], "error: out: cannot create folder"),
        (["eval", "m.safetensors", "--state-dir", str(a_file)], "error: state-dir: "),
    ]
    if Path("/proc/self").is_dir():  # a folder no file can be made in
        cases.append((["train", *TINY, "--out", "/proc"], "error: out: cannot write in folder"))
    for argv, expected in cases:
        assert main(argv) == 2
        assert _error_line(capsys).startswith(expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_a_second_train_on_the_same_out_is_refused_while_the_first_runs(tmp_path, capsys):
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "w") as held:  # what a running dyart train holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        assert main(["train", *TINY, "--out", str(out)]) == 2
        assert _error_line(capsys) == (
            f"error: out: {out} is in use by another dyart train (pid 4242)"
        )
    assert sorted(p.name for p in out.iterdir()) == [".lock"]
    assert main(["train", *TINY, "--epochs", "1", "--eval-eps", "--out", str(out)]) == 0


def test_the_data_dir_defaults_to_dyart_data_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DYART_DATA_DIR", str(tmp_path / "datasets"))
    argv = ["train", "--dataset", "cifar10", "--architecture", "small_cnn", "--method", "clean"]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert str(tmp_path / "datasets") in _error_line(capsys)


def test_a_recipe_for_another_dataset_names_the_values_it_keeps(caplog):
    from dyart.cli import build_parser, load_config

    argv = ["train", "--recipe", "mnist10k_dyart", "--dataset", "digits", "--eval-n", "100"]
    config = load_config(build_parser().parse_args([*argv, "--hparam", "r0=0.5"]))
    assert (config.dataset, config.eval_eps, config.hparams["eps_fab"]) == ("digits", [0.3], 0.3)
    assert [r.getMessage() for r in caplog.records] == [
        "warning: recipe mnist10k_dyart was made for mnist10k; kept from it, tuned for "
        "mnist10k: eval_eps=[0.3], val_size=256, eps_fab=0.3 (override them with flags or "
        "--hparam, or start from a config for digits)"
    ]
    caplog.clear()
    load_config(build_parser().parse_args(["train", "--recipe", "mnist10k_dyart"]))
    assert caplog.records == []


@pytest.mark.parametrize(
    ("hparams", "expected"),
    [
        (["r0="], "error: hparams.r0: no value in 'r0='; give r0=VALUE, or leave it out"),
        (["r0=null"], "error: hparams.r0: no value in 'r0=null'"),
        (["r0=0.5", "r0=0.6"], "error: hparams.r0: given twice (0.5 and 0.6); give it once"),
    ],
)
def test_an_empty_or_repeated_hparam_is_refused(hparams, expected, capsys):
    argv = ["train", "--recipe", "mnist10k_dyart"]
    for item in hparams:
        argv += ["--hparam", item]
    assert main(argv) == 2
    assert _error_line(capsys).startswith(expected)


def test_a_config_that_is_a_folder_is_named_a_folder(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path)]) == 2
    assert _error_line(capsys) == f"error: config: {tmp_path} is a folder; give a YAML or JSON file"


@pytest.mark.parametrize("state_dir", [True, False])
def test_ctrl_c_during_eval_is_one_line_saying_what_is_kept(tmp_path, state_dir):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--eval-eps", "--out", str(out)]) == 0
    fifo = tmp_path / "results.json"
    os.mkfifo(fifo)  # eval waits here, after the attacks, until Ctrl-C: no race with them
    progress = tmp_path / "progress"
    argv = ["eval", str(out / "model-best.safetensors"), "--eps", "0.1", "--preset", "fast"]
    argv += ["--n", "30", "--device", "cpu", "--output", str(fifo)]
    argv += ["--state-dir", str(progress)] if state_dir else []
    proc = _cli_process(argv, tmp_path, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    for line in proc.stdout:  # the JSON is printed before the --output file is opened
        if line.rstrip() == "}":
            break
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    if state_dir:
        assert last == (
            f"stopped: interrupted; the attacks finished so far are kept in {progress}: run "
            "the same command to resume"
        )
    else:
        assert last.startswith("stopped: interrupted; nothing was kept (give --state-dir")


def test_a_run_whose_stages_leave_out_evaluate_says_so(tmp_path, capsys):
    assert main(["train", *TINY, "--stages", "burn_in", "--out", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    assert "results:    (no evaluation: the evaluate stage was not run; add it to --stages)" in (
        printed
    )


def test_eval_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "AutoAttack preset: standard" in text
    assert "images attacked at once; lower it if the device runs out of memory" in text


def _cli_process(argv: list[str], cwd: Path, stdout: int = subprocess.DEVNULL) -> subprocess.Popen:
    """``python -m dyart.cli ARGV`` as a terminal starts it, with Ctrl-C (SIGINT) at its
    default whatever the test run inherited: a shell's background job ignores SIGINT,
    its children too, and Python then never raises KeyboardInterrupt."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "dyart.cli", *argv], env=env, cwd=cwd,
        stdout=stdout, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def _train_process(argv: list[str], cwd: Path) -> subprocess.Popen:
    return _cli_process(["train", *argv], cwd)


def _pgd_at_argv(dataset: str, arch: str, epochs: int, steps: int, out: Path) -> list[str]:
    """``dyart train`` flags of a PGD-AT run with no burn-in and no evaluation."""
    return [
        "--dataset", dataset, "--architecture", arch, "--method", "pgd_at",
        "--epochs", str(epochs), "--burn-in-epochs", "0", "--batch-size", "64",
        "--schedule", "constant", "--val-size", "64", "--val-pgd-steps", "2", "--eval-eps",
        "--hparam", f"steps={steps}", "--device", "cpu", "--out", str(out),
    ]  # fmt: skip


def _read_until(proc: subprocess.Popen, start: str) -> list[str]:
    """The stderr lines up to the first that starts with ``start``."""
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith(start):
            return lines
    raise AssertionError(f"the process ended before printing {start!r}: {''.join(lines)}")


def test_ctrl_c_in_training_saves_and_stops_and_the_same_command_resumes(tmp_path, caplog):
    import logging

    out = tmp_path / "run"
    argv = _pgd_at_argv("synthetic", "small_cnn", epochs=8, steps=200, out=out)
    proc = _train_process(argv, tmp_path)
    _read_until(proc, "train: 8 epochs of 5 steps")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr
    assert "stopping after this step (Ctrl-C again to abort)..." in stderr
    last = stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"stopped: stopped at train epoch [1-8] step \d+; state saved to {out}/state/latest.pt "
        r"\(run again with the same out_dir to resume\)",
        last,
    ), last
    stopped_at = int(re.search(r"epoch (\d)", last).group(1))
    metrics = out / "metrics.jsonl"  # a row per finished epoch
    rows_before = (
        [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    )
    assert [r["epoch"] for r in rows_before] == list(range(1, stopped_at))

    caplog.set_level(logging.INFO, logger="dyart")
    assert main(["train", *argv]) == 0  # the same command: resumes where it stopped
    step = int(re.search(r"step (\d+);", last).group(1))
    resumed = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("resuming train")
    ]
    assert len(resumed) == 1 and resumed[0].startswith(
        f"resuming train at epoch {stopped_at} of 8, after step {step}"
    ), resumed
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in rows] == [("train", e) for e in range(1, 9)]


def test_a_second_ctrl_c_aborts_at_once_and_keeps_the_last_saved_state(tmp_path):
    from dyart import checkpoint

    out = tmp_path / "run"
    argv = _pgd_at_argv("mnist10k", "preact_resnet18", epochs=1, steps=10, out=out)
    proc = _train_process(argv, tmp_path)  # a step takes seconds: both Ctrl-Cs land in one
    _read_until(proc, "train: 1 epochs of")
    proc.send_signal(signal.SIGINT)
    _read_until(proc, "stopping after this step (Ctrl-C again to abort)...")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"stopped: aborted; {out}/state keeps the state saved at the last epoch end: run the "
        "same command to resume from it"
    )
    state = checkpoint.load_training_state(out / "state" / "latest.pt")  # whole, not cut short
    assert state["done"] == ["burn_in"] and state["run"] is None


def test_the_train_summary_shows_an_evaluations_warnings(capsys):
    from dyart.cli import _print_summary

    evaluation = {
        "preset": "fast", "n": 40, "norm": "linf", "checkpoint": "best", "leaderboard_grade": False,
        "results": [{"eps": 0.1, "clean_acc": 0.9, "robust_acc": 0.8}],
        "warnings": ["some inputs have a zero gradient of the logit margin"],
    }  # fmt: skip
    _print_summary({"checkpoints": {}, "results": "r.json", "evaluation": evaluation}, "")
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == [
        "  eps 0.1: clean 0.9000 robust 0.8000",
        "  warning: some inputs have a zero gradient of the logit margin",
    ]


def test_a_dataset_missing_from_the_data_folder_names_its_files_and_the_folder(tmp_path, capsys):
    args = ["train", "--dataset", "cifar10", "--architecture", "small_cnn", "--method", "dyart"]
    assert main([*args, "--data-dir", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    line = _error_line(capsys)
    assert line.startswith("error: dataset: dataset 'cifar10' is not installed: expected ")
    assert "cifar-10-batches-py/test_batch" in line and line.endswith(f"under {tmp_path}")
    assert not (tmp_path / "run").exists()
