"""Compute accounting: FLOPs per stage, peak FLOP/s of the device, MFU, GPU-hours.

Definitions (docs/method.md "Compute accounting" / the project issue): training costs 6 N FLOPs per trained token (forward 2N +
backward 4N), inference 2 N per generated or scored token, where N is the model's parameter count.
Attention FLOPs are left out on purpose: every stage uses the same definition, so the FLOP-matched
baselines compare like with like.
"""

from __future__ import annotations

import time
from typing import Optional

import torch

# Dense (no sparsity) peak FLOP/s from the vendors' data sheets, keyed by a substring of
# torch.cuda.get_device_name(). Order matters: more specific names first ("H100 PCIe" before "H100").
# fp32 means plain FP32 CUDA cores (TF32 tensor cores are opt-in in torch).
_GPU_PEAKS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"bfloat16": 756e12, "float16": 756e12, "float32": 51e12}),
    ("H100 NVL", {"bfloat16": 835e12, "float16": 835e12, "float32": 60e12}),
    ("H100", {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12}),  # SXM ("H100 80GB HBM3")
    ("H200", {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12}),
    ("GH200", {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12}),
    ("A100", {"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12}),
    ("L40S", {"bfloat16": 362e12, "float16": 362e12, "float32": 91.6e12}),
    ("A10G", {"bfloat16": 70e12, "float16": 70e12, "float32": 31.2e12}),
    ("V100", {"float16": 125e12, "float32": 15.7e12}),
]


def train_flops(n_params: int, tokens: int) -> float:
    """6 N FLOPs per trained token."""
    _check_non_negative(n_params=n_params, tokens=tokens)
    return 6.0 * n_params * tokens


def inference_flops(n_params: int, tokens: int) -> float:
    """2 N FLOPs per generated or scored token."""
    _check_non_negative(n_params=n_params, tokens=tokens)
    return 2.0 * n_params * tokens


def mfu(achieved_flops_per_s: float, peak: Optional[float]) -> Optional[float]:
    """Model FLOPs utilisation: achieved / peak (None when the peak is unknown)."""
    if peak is None:
        return None
    if peak <= 0:
        raise ValueError(f"peak FLOP/s must be > 0, got {peak}")
    return achieved_flops_per_s / peak


def gpu_hours(wall_s: float, n_gpus: int) -> float:
    """GPU-hours of a job that held `n_gpus` for `wall_s` seconds (0 GPUs: a CPU job, 0 hours)."""
    _check_non_negative(wall_s=wall_s, n_gpus=n_gpus)
    return wall_s * n_gpus / 3600.0


def _dtype_name(dtype: str | torch.dtype) -> str:
    name = str(dtype).replace("torch.", "")
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
    return aliases.get(name, name)


def device_peak_flops(device_name: str, dtype: str | torch.dtype) -> Optional[float]:
    """Data-sheet dense peak FLOP/s of a known GPU for `dtype`; None for an unknown device or dtype."""
    dtype = _dtype_name(dtype)
    for key, peaks in _GPU_PEAKS:
        if key.lower() in device_name.lower():
            return peaks.get(dtype)
    return None


def measure_matmul_peak_flops(
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.float32,
    size: int = 1024,
    seconds: float = 1.0,
) -> float:
    """Measured FLOP/s of square matmuls of `size` on `device` (the achievable peak of this machine).

    Uses the current torch thread count, so measure with the same threads the trainer uses.
    """
    if size <= 0 or seconds <= 0:
        raise ValueError(f"size and seconds must be > 0, got size={size}, seconds={seconds}")
    device = torch.device(device)
    if isinstance(dtype, str):
        dtype = getattr(torch, _dtype_name(dtype))
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.matmul(a, b)  # warm-up: first call pays for kernel selection / allocation
    sync()
    best = 0.0
    n_calls = 1
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(n_calls):
            torch.matmul(a, b)
        sync()
        elapsed = time.perf_counter() - start
        best = max(best, 2.0 * size**3 * n_calls / elapsed)
        if elapsed < 0.05:  # too short to time well: batch more calls per measurement
            n_calls *= 2
    return best


def peak_flops_for(device: torch.device, dtype: str | torch.dtype, measure_seconds: float = 0.3) -> float:
    """Data-sheet peak for a known GPU, otherwise a quick matmul measurement on this device."""
    if device.type == "cuda":
        peak = device_peak_flops(torch.cuda.get_device_name(device), dtype)
        if peak is not None:
            return peak
    return measure_matmul_peak_flops(device, dtype, size=1024, seconds=measure_seconds)


def _check_non_negative(**values: float) -> None:
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
