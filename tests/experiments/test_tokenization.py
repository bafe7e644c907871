import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from experiments.tokenization import (
    add_latent_tokens,
    latent_token_ids,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from experiments.tokens import BOS, EOS, LATENT_TOKENS, PAD

TEXTS = ["Tom has 12 apples and buys 35 more. How many apples does Tom have now?\n\nAnswer: 47."] * 20 + [
    "Solve 3*x+5=26 for x.\n\nAnswer: 7.",
    "The sum 1234567890 is large.",
] * 5


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, 300)


def test_special_tokens_have_fixed_single_ids(tok):
    assert [tok.convert_tokens_to_ids(t) for t in [BOS, EOS, PAD]] == [0, 1, 2]
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (BOS, EOS, PAD)
    assert latent_token_ids(tok) == dict(zip(LATENT_TOKENS, [3, 4, 5, 6]))
    assert len(tok) == 300


def test_digits_are_one_token_each_and_text_round_trips(tok):
    text = "Tom has 1234567890 apples"
    pieces = tok.convert_ids_to_tokens(tok.encode(text, add_special_tokens=False))
    assert [p for p in pieces if any(ch.isdigit() for ch in p)] == list("1234567890")
    for x in TEXTS[:1] + [
        "  odd\tspacing\n\n\nand ünïcödé ✓ 3.14",
        f"Q?{LATENT_TOKENS[0]}{LATENT_TOKENS[2]}3*7=21.{LATENT_TOKENS[1]} Answer: 26.",
    ]:
        ids = tok.encode(x, add_special_tokens=False)
        assert tok.decode(ids) == x


def test_encoding_prepends_bos_but_not_eos(tok):
    ids = tok("Answer: 7.")["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids
    # a latent token inside text is one id, never split into characters
    assert tok.encode(f"x{LATENT_TOKENS[3]}y", add_special_tokens=False)[1] == 6


def test_save_load_round_trip(tok, tmp_path):
    save_tokenizer(tok, tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    x = f"What is 3*7+5?\n\n{LATENT_TOKENS[0]}{LATENT_TOKENS[2]}21+5=26.{LATENT_TOKENS[1]}Answer: 26."
    assert again(x)["input_ids"] == tok(x)["input_ids"]
    assert latent_token_ids(again) == latent_token_ids(tok)
    assert again.pad_token_id == 2
    with pytest.raises(FileNotFoundError, match="no tokenizer in"):
        load_tokenizer(tmp_path / "missing")


def test_too_small_vocab_is_a_clear_error():
    with pytest.raises(ValueError, match="model.vocab_size=100 is too small"):
        train_tokenizer(TEXTS, 100)


def test_add_latent_tokens_to_a_pretrained_model(tok, tmp_path):
    # a "pretrained" tokenizer without latent tokens: a plain BPE trained without them
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=280, special_tokens=["<s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    plain = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="<s>")
    with pytest.raises(ValueError, match="does not hold <\\|START_OF_LATENT\\|> as one token"):
        latent_token_ids(plain)
    torch.manual_seed(0)
    dim = 64
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(plain), hidden_size=dim, num_hidden_layers=1,
                                         num_attention_heads=4, intermediate_size=64, tie_word_embeddings=False))
    old = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    ids = add_latent_tokens(plain, model, seed=0)
    assert sorted(ids.values()) == list(range(len(old), len(old) + 4))
    emb = model.get_input_embeddings().weight
    assert emb.shape == (len(old) + 4, dim)
    assert torch.equal(emb[: len(old)], old)  # pretrained rows untouched
    assert torch.equal(model.get_output_embeddings().weight[: len(old)], old_out)
    new = emb[len(old):].detach()
    # N(0, std=dim**-0.5): 256 draws, the sample std within 25% of 0.125
    assert abs(new.std().item() - dim**-0.5) < 0.25 * dim**-0.5
    assert abs(new.mean().item()) < 0.05
    assert plain.decode(plain.encode(f"a{LATENT_TOKENS[0]}b", add_special_tokens=False)) == f"a{LATENT_TOKENS[0]}b"
    assert add_latent_tokens(plain, model) == ids  # idempotent
    assert model.get_input_embeddings().weight.shape[0] == len(old) + 4
