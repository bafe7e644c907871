import pytest
import torch
from transformers import AutoModelForCausalLM

from experiments.modeling import build_model, count_params, load_model, save_model
from experiments.tokenization import train_tokenizer

CFG = dict(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
           max_position_embeddings=64, tie_embeddings=True)


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_build_is_deterministic_per_seed_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(CFG, 300, 0, 1, 2, seed=7)
    assert torch.equal(torch.rand(1), before)
    assert _same(a, build_model(CFG, 300, 0, 1, 2, seed=7))
    assert not _same(a, build_model(CFG, 300, 0, 1, 2, seed=8))
    assert a.config.num_key_value_heads == 2 and a.config.pad_token_id == 2


def test_count_params_by_hand():
    m = build_model(CFG, 300, 0, 1, 2, seed=0)
    d, f, v, L, kv_dim = 32, 64, 300, 2, 2 * (32 // 4)
    per_layer = d * d * 2 + d * kv_dim * 2 + 3 * d * f + 2 * d  # q,o + k,v + mlp + two norms
    assert count_params(m) == v * d + L * per_layer + d  # tied head counted once, final norm
    assert count_params(m, non_embedding=True) == L * per_layer + d
    untied = build_model({**CFG, "tie_embeddings": False}, 300, 0, 1, 2, seed=0)
    assert count_params(untied) == count_params(m) + v * d
    assert count_params(untied, non_embedding=True) == count_params(m, non_embedding=True)


def test_save_load_round_trip_in_hf_format(tmp_path):
    tok = train_tokenizer(["What is 3*7+5? Answer: 26."] * 5, 270)
    m = build_model(CFG, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, seed=0).eval()
    save_model(m, tok, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").exists()
    assert (tmp_path / "ckpt" / "tokenizer.json").exists()
    x = torch.tensor([tok("What is 3*7+5?")["input_ids"]])
    for loaded in (load_model(tmp_path / "ckpt"), AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")):
        assert torch.equal(loaded(x).logits, m(x).logits)
    assert load_model(tmp_path / "ckpt", dtype="bfloat16").dtype == torch.bfloat16
    with pytest.raises(FileNotFoundError, match="config.json missing"):
        load_model(tmp_path / "nothing")


def test_bad_shapes_and_dtype_name_the_field():
    with pytest.raises(ValueError, match="model.hidden_size=30 is not divisible by model.num_heads=4"):
        build_model({**CFG, "hidden_size": 30}, 300, 0, 1, 2, seed=0)
    with pytest.raises(ValueError, match="model.num_heads=4 is not divisible by model.num_kv_heads=3"):
        build_model({**CFG, "num_kv_heads": 3}, 300, 0, 1, 2, seed=0)
    with pytest.raises(ValueError, match="model.dtype='fp8'"):
        build_model({**CFG, "dtype": "fp8"}, 300, 0, 1, 2, seed=0)
