# The two commands of the README. Both install what they need first (idempotent).
.PHONY: up test lint bench setup

setup:
	./scripts/setup.sh

up: setup
	.venv/bin/xplane up

test: setup
	./scripts/services.sh
	.venv/bin/pytest -q -p no:cacheprovider

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

bench: setup
	.venv/bin/python -m bench
