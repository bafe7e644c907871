"""Samplers: batched generation and scoring in token ids behind one interface (hf, vllm)."""

from experiments.samplers.base import SampleOut, Sampler, build_sampler

__all__ = ["SampleOut", "Sampler", "build_sampler"]
