"""Samplers: batched generation and scoring in token ids behind one interface (hf, vllm).

``base.py`` is the interface; ``build_sampler`` picks the backend a config names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.samplers.base import SampleOut, Sampler

BACKENDS = ("hf", "vllm")

__all__ = ["BACKENDS", "SampleOut", "Sampler", "build_sampler"]


def build_sampler(sampler_cfg: dict[str, Any], model_dir: str | Path) -> Sampler:
    """The sampler named by ``sampler.backend`` over the checkpoint in ``model_dir``."""
    backend = sampler_cfg.get("backend", "hf")
    if backend == "hf":
        from experiments.samplers.hf import HFSampler

        return HFSampler.from_pretrained(model_dir, sampler_cfg)
    if backend == "vllm":
        # imported lazily: vllm is a heavy, optional install (make setup-vllm / the gpu extra)
        from experiments.samplers.vllm import VLLMSampler

        return VLLMSampler.from_pretrained(model_dir, sampler_cfg)
    raise ValueError(f"sampler.backend={backend!r} is not one of {list(BACKENDS)}")
