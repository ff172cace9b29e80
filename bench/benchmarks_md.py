"""Assemble BENCHMARKS.md from the result files the benchmarks write.

    .venv/bin/python bench/benchmarks_md.py

Each benchmark writes its own ``bench/results/<name>.md`` (table, machine,
command); this joins them under one heading per issue they answer, so the
figures in BENCHMARKS.md are always the ones a run produced.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

SECTIONS = [
    ("step_cost.md", "Training-step cost and boundary-search quality (`bench/step_cost.py`)"),
    (
        "step_cost_recipe.md",
        "Training-step cost at the MNIST recipe's 10 search iterations (`bench/step_cost.py`)",
    ),
    ("robustness.md", "Robustness of each method on MNIST-10k (`bench/robustness.py`)"),
    ("training_cost.md", "Training cost of each method on one machine (`bench/robustness.py`)"),
    ("dyart_tuning.md", "DyART settings on MNIST-10k, validation screen (`bench/dyart_tuning.py`)"),
    ("dyart_tuning_recipe.md", "DyART around the former recipe, λ 1000 (`bench/dyart_tuning.py`)"),
    ("dyart_tuning_lambda.md", "DyART: λ and the search around it (`bench/dyart_tuning.py`)"),
    ("dyart_tuning_cost.md", "DyART at the baselines' cost (`bench/dyart_tuning.py`)"),
    ("dyart_tuning_clip.md", "DyART: clipping and EMA decay (`bench/dyart_tuning.py`)"),
    ("dyart_tuning_more.md", "DyART: more search, α, lr, weight decay (`bench/dyart_tuning.py`)"),
    ("dyart_tuning_search.md", "DyART: the search, temperature, r0 (`bench/dyart_tuning.py`)"),
    ("dyart_tuning_batch.md", "DyART: batch size and momentum (`bench/dyart_tuning.py`)"),
    ("dyart_tuning_epochs12.md", "DyART: twelve epochs (`bench/dyart_tuning.py`)"),
    ("dyart_tuning_model.md", "DyART: burn-in length and a bigger model (`bench/dyart_tuning.py`)"),
    ("dyart_tuning_fused.md", "DyART: the fused crossing check (`bench/dyart_tuning.py`)"),
    ("dyart_tuning_fused_cost.md", "DyART: fewer iterations, fused (`bench/dyart_tuning.py`)"),
    ("dyart_tuning_equal_time.md", "DyART at PGD-AT's training time (`bench/dyart_tuning.py`)"),
    ("search_quality.md", "Boundary search on robust MNIST models (`bench/search_quality.py`)"),
    ("api_load.md", "API latency and throughput under load (`bench/api_load.py`)"),
    ("gpu.md", "GPU throughput"),
]

HEADER = """# Benchmarks

Every figure here was measured by the script named in its section, with the
command and the machine written next to it. Regenerate this file with
`make bench` (runs every benchmark, then `bench/benchmarks_md.py`).
"""


def demote(text: str) -> str:
    """Shift the headings of a result file one level down."""
    return "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines())


def main() -> None:
    parts = [HEADER]
    for name, title in SECTIONS:
        path = RESULTS / name
        if path.is_file():
            parts.append(demote(path.read_text()).strip() + "\n")
        else:
            parts.append(f"## {title}\n\n_Not measured: there is no {name} yet._\n")
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts))


if __name__ == "__main__":
    main()
