# One verb each; every target sets up .venv first when it is missing.
# Running the service needs no browser: only `make test` installs Chromium.
.PHONY: run demo test check install services bench

install:
	@scripts/install

services:
	@scripts/services

run:
	@DYART_SKIP_BROWSER=1 scripts/install
	@scripts/serve --demo

demo:
	@DYART_SKIP_BROWSER=1 scripts/install
	.venv/bin/dyart train --recipe mnist10k_dyart --out runs/demo

check:
	@DYART_SKIP_BROWSER=1 scripts/install
	@scripts/check

test: install services
	@scripts/check
	@scripts/test

bench:
	@DYART_SKIP_BROWSER=1 scripts/install
	PYTHONPATH=. .venv/bin/python bench/step_cost.py
	# one process per core (faster than one on two threads); then the table from both
	PYTHONPATH=. .venv/bin/python bench/robustness.py --train-only --methods clean pgd_at trades & \
	PYTHONPATH=. .venv/bin/python bench/robustness.py --train-only --methods mart dyart; wait
	PYTHONPATH=. .venv/bin/python bench/robustness.py --results /tmp/dyart-robustness-a.md & \
	PYTHONPATH=. .venv/bin/python bench/robustness.py --results /tmp/dyart-robustness-b.md; wait
	PYTHONPATH=. .venv/bin/python bench/robustness.py --table-only
	# the cost question alone: every method retrained on this machine, one after another
	PYTHONPATH=. .venv/bin/python bench/robustness.py --retrain --train-only \
		--work-dir /tmp/dyart-bench-cost --models /tmp/dyart-bench-cost/models \
		--cost-table bench/results/training_cost.md
	PYTHONPATH=. .venv/bin/python bench/search_quality.py
	.venv/bin/python bench/api_load.py
	.venv/bin/python bench/benchmarks_md.py
