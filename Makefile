.PHONY: setup test demo lint bench lab-up lab-down
setup: ; scripts/setup
test: ; scripts/test
demo: ; scripts/demo
lint: ; .venv/bin/ruff check . && .venv/bin/mypy
bench: ; for b in bench_remote bench_plugin_overhead bench_wait; do .venv/bin/python bench/$$b.py || exit 1; done
lab-up: ; .venv/bin/vpstest lab up
lab-down: ; .venv/bin/vpstest lab down
