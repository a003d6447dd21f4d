# The two commands a newcomer needs: `make run` and `make test`. Both bootstrap themselves.
.PHONY: run test lint bench bootstrap

bootstrap:
	@scripts/bootstrap.sh

run: bootstrap
	.venv/bin/foundry serve

test: bootstrap
	scripts/test.sh

lint: bootstrap
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

bench: bootstrap
	.venv/bin/python bench/runtime.py
