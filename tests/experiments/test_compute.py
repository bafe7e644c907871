"""FLOPs accounting with hand numbers, GPU peak table, measured matmul peak."""

from __future__ import annotations

import pytest
import torch

from experiments import compute


def test_train_and_inference_flops_by_hand():
    # TinyLlama 1.1B on 13B tokens (docs/method.md "The paper's scale"): 6 * 1.1e9 * 13e9 = 8.58e19
    assert compute.train_flops(1_100_000_000, 13_000_000_000) == pytest.approx(8.58e19)
    assert compute.train_flops(620_000, 1_420_000) == 6 * 620_000 * 1_420_000
    assert compute.inference_flops(620_000, 1_000) == 1_240_000_000
    assert compute.train_flops(10, 0) == 0
    with pytest.raises(ValueError, match="tokens must be >= 0"):
        compute.train_flops(10, -1)


def test_mfu_and_gpu_hours():
    assert compute.mfu(494.5e12, 989e12) == pytest.approx(0.5)
    assert compute.mfu(1e12, None) is None
    with pytest.raises(ValueError, match="peak"):
        compute.mfu(1.0, 0.0)
    assert compute.gpu_hours(5400, 8) == pytest.approx(12.0)  # 1.5 h on 8 GPUs
    assert compute.gpu_hours(3600, 0) == 0.0
    with pytest.raises(ValueError, match="n_gpus"):
        compute.gpu_hours(10, -1)


@pytest.mark.parametrize(
    "name,dtype,peak",
    [
        ("NVIDIA H100 80GB HBM3", "bfloat16", 989e12),  # SXM
        ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989e12),
        ("NVIDIA H100 PCIe", "bf16", 756e12),  # PCIe must not match the SXM row
        ("NVIDIA H200", "bfloat16", 989e12),
        ("NVIDIA A100-SXM4-80GB", "bfloat16", 312e12),
        ("NVIDIA A100-SXM4-80GB", "float32", 19.5e12),
        ("NVIDIA GeForce GTX 1080", "bfloat16", None),
        ("NVIDIA V100", "bfloat16", None),  # no bf16 on V100
    ],
)
def test_device_peak_table(name, dtype, peak):
    assert compute.device_peak_flops(name, dtype) == peak


def test_measured_matmul_peak_is_plausible_and_consistent():
    torch.set_num_threads(1)
    peak = compute.measure_matmul_peak_flops("cpu", torch.float32, size=256, seconds=0.2)
    # one modern core does 1e9 - 2e11 fp32 FLOP/s; anything outside means the timing is wrong
    assert 1e9 < peak < 2e11
    assert compute.peak_flops_for(torch.device("cpu"), "float32", measure_seconds=0.2) == pytest.approx(peak, rel=0.8)
    with pytest.raises(ValueError, match="size"):
        compute.measure_matmul_peak_flops("cpu", size=0)
