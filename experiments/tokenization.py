"""Tokenizers: a byte-level BPE trained offline on the corpus, and the latent tokens for pretrained ones.

The trained tokenizer:
- byte-level BPE, so every string round-trips exactly (``decode(encode(x)) == x``);
- digits are split one per token *before* BPE, so no merge ever glues digits together or to a space
  (the arithmetic the embedded world tests stays visible to the model digit by digit);
- BOS/EOS/PAD and the four latent tokens (experiments/tokens.py) are special tokens, each one id;
- ``tok(text)`` prepends BOS (a template post-processor), so a prompt encoded by any caller
  (the hf sampler, vLLM) starts the way every training document starts. EOS is not appended:
  prompts must stay open. ``formats.encode_document`` adds EOS to training documents.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from experiments.tokens import BOS, EOS, LATENT_TOKENS, PAD

SPECIAL_TOKENS = [BOS, EOS, PAD, *LATENT_TOKENS]
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)  # the byte alphabet plus our special tokens


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of ``vocab_size`` ids (specials included) on ``texts``."""
    if vocab_size < MIN_VOCAB:
        raise ValueError(
            f"model.vocab_size={vocab_size} is too small: a byte-level BPE needs at least "
            f"{MIN_VOCAB} ids (256 bytes + {len(SPECIAL_TOKENS)} special tokens)"
        )
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,  # ids 0..6 in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    bos_id = core.token_to_id(BOS)
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=list(LATENT_TOKENS),
        clean_up_tokenization_spaces=False,  # it would rewrite " ." and break round-trips
        model_input_names=["input_ids", "attention_mask"],
    )


def save_tokenizer(tok: PreTrainedTokenizerBase, out_dir: str | Path) -> None:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out_dir))


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    if not (Path(path) / "tokenizer.json").exists() and not (Path(path) / "tokenizer_config.json").exists():
        raise FileNotFoundError(f"no tokenizer in {path} (expected tokenizer.json / tokenizer_config.json)")
    return AutoTokenizer.from_pretrained(str(path))


def latent_token_ids(tok: PreTrainedTokenizerBase) -> dict[str, int]:
    """Id of each latent token; a tokenizer without them is an error, not a silent split."""
    ids = {}
    for t in LATENT_TOKENS:
        enc = tok.encode(t, add_special_tokens=False)
        if len(enc) != 1:
            raise ValueError(f"tokenizer does not hold {t} as one token (encodes to {enc}); use add_latent_tokens")
        ids[t] = enc[0]
    return ids


def add_latent_tokens(tok: PreTrainedTokenizerBase, model: torch.nn.Module, seed: int = 0) -> dict[str, int]:
    """Add the four latent tokens to a pretrained tokenizer and model (docs/method.md "Data format").

    New embedding rows (and output rows when untied) are drawn from N(0, dim**-0.5): small, so the
    pretrained distribution over ordinary tokens barely moves before training sees them.
    Returns the ids of the latent tokens. Idempotent: tokens already present are not added again.
    """
    missing = [t for t in LATENT_TOKENS if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    old_rows = model.get_input_embeddings().weight.shape[0]
    if len(tok) > old_rows:
        model.resize_token_embeddings(len(tok), mean_resizing=False)
        gen = torch.Generator().manual_seed(seed)
        emb = model.get_input_embeddings().weight
        std = emb.shape[1] ** -0.5  # std dim^-0.5: the scale of a unit-norm-ish row
        with torch.no_grad():
            new = torch.randn(len(tok) - old_rows, emb.shape[1], generator=gen) * std
            emb[old_rows:] = new.to(emb.dtype)
            out = model.get_output_embeddings()
            if out is not None and out.weight.data_ptr() != emb.data_ptr():
                out.weight[old_rows:] = (torch.randn(new.shape, generator=gen) * std).to(out.weight.dtype)
    return latent_token_ids(tok)
