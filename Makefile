# One verb each; every target sets up .venv first when it is missing.
.PHONY: run demo test check install services bench

install:
	@scripts/install

services:
	@scripts/services

run: install
	@scripts/serve --demo

demo: install
	.venv/bin/dyart train --recipe mnist10k_dyart --out runs/mnist10k_dyart

check: install
	@scripts/check

test: install services
	@scripts/check
	@scripts/test

bench: install
	.venv/bin/python bench/step_cost.py
	.venv/bin/python bench/api_load.py
