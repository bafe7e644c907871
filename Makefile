# Every command runs from the repository root: our package `platform` shadows the stdlib module.
PY ?= .venv/bin/python
export PYTHONUNBUFFERED = 1

.PHONY: setup setup-vllm sweep test test-fast dashboard bench clean

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install --upgrade pip
	# CPU build of torch where there is no GPU (never the multi-GB CUDA build on a laptop/CI box)
	if command -v nvidia-smi >/dev/null 2>&1; then .venv/bin/pip install torch==2.13.0; \
	else .venv/bin/pip install torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cpu; fi
	.venv/bin/pip install -e '.[dev]'
	touch $@

setup: .venv/.installed

setup-vllm:
	bash scripts/setup_vllm.sh

sweep: setup
	$(PY) -m platform.sweep experiment=em_compute

test: setup
	$(PY) -m pytest -q -x tests

dashboard: setup
	$(PY) -m streamlit run dashboard/app.py --server.address 127.0.0.1

bench: setup
	$(PY) -m benchmarks.run

clean:
	rm -rf results .cache
