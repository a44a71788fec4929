.PHONY: setup test demo lint bench lab-up lab-down
setup: ; scripts/setup
test: ; scripts/test
demo: ; scripts/demo
lint: ; .venv/bin/ruff check . && .venv/bin/mypy
bench: ; .venv/bin/python bench/run.py
lab-up: ; .venv/bin/vpstest lab up
lab-down: ; .venv/bin/vpstest lab down
