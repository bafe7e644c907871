"""lm-evaluation-harness: the paper's evaluation tool, on the cluster's tasks or on our held-out problems.

``eval.harness_tasks`` names lm-eval tasks (``gsm8k_cot``, ``minerva_math``... which download their
data from the Hugging Face Hub, so a cluster node needs network access or a filled HF cache) and/or
``platform_heldout``: the run's own held-out problems written as a local lm-eval task, which runs
offline. Its prompt is the eval stage's (``formats.eval_prompt``); raw models continue
"Answer:" as in ``evaluate.greedy_answers``, latent models write ``thought EoL Answer: N`` in one
greedy pass (lm-eval has no two-phase generation, so a latent model that does not write "Answer:"
after EoL itself scores lower here than in the eval stage's ``accuracy``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from experiments.corpus import Problem
from experiments.formats import answer_prefix, eval_prompt

LOCAL_TASK = "platform_heldout"
_NUMBER = r"-?[0-9][0-9,]*(?:\.[0-9]+)?"


def write_local_task(problems: Sequence[Problem], latent: bool, out_dir: str | Path, max_new_tokens: int,
                     max_thought_tokens: int, empty_question_thought: bool = False) -> Path:
    """``platform_heldout`` as an lm-eval task folder (YAML + JSONL) under ``out_dir``; returns the folder."""
    folder = Path(out_dir) / "harness_task"
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "heldout.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for p in problems:
            prompt = eval_prompt(p.question, latent, empty_question_thought) + ("" if latent else answer_prefix())
            f.write(json.dumps({"prompt": prompt, "answer": p.answer}) + "\n")
    # raw: the generation is the number after "Answer:"; latent: find it after the thought
    pattern = f"{answer_prefix()}\\s*({_NUMBER})" if latent else f"({_NUMBER})"
    max_tokens = max_new_tokens + (max_thought_tokens + 1 if latent else 0)
    task = {
        "task": LOCAL_TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{answer}}",
        "target_delimiter": "",
        "generation_kwargs": {"until": ["\n"], "do_sample": False, "max_gen_toks": max_tokens},
        "filter_list": [{"name": "answer", "filter": [{"function": "regex", "regex_pattern": pattern},
                                                     {"function": "take_first"}]}],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    }
    (folder / f"{LOCAL_TASK}.yaml").write_text(yaml.safe_dump(task, sort_keys=False), encoding="utf-8")
    return folder


def run_harness(model_dir: str | Path, tasks: Sequence[str], out_dir: str | Path, backend: str = "vllm",
                num_fewshot: Optional[int] = None, limit: Optional[int] = None,
                include_path: Optional[str | Path] = None) -> dict[str, dict[str, Any]]:
    """lm-evaluation-harness ``simple_evaluate``, greedy, with the tasks' own few-shot prompts.

    Writes ``harness_results.json`` into ``out_dir``; returns ``results["results"]`` (task -> metrics).
    ``include_path``: a folder of extra task YAMLs (``write_local_task``).
    """
    try:
        import lm_eval
    except ImportError as e:
        raise RuntimeError(
            "eval.harness_tasks needs lm-evaluation-harness, which is not installed: `pip install -e '.[eval]'` "
            "(or `pip install 'lm_eval[vllm]'` on a GPU cluster)."
        ) from e
    if backend not in ("vllm", "hf"):
        raise ValueError(f"harness backend {backend!r} must be 'vllm' or 'hf'")
    if not tasks:
        raise ValueError("run_harness: no tasks given (eval.harness_tasks is empty)")
    kwargs: dict[str, Any] = {}
    if backend == "hf":
        import torch

        kwargs["device"] = "cuda" if torch.cuda.is_available() else "cpu"  # lm-eval's default is cuda
    if include_path is not None:
        from lm_eval.tasks import TaskManager

        kwargs["task_manager"] = TaskManager(include_path=str(include_path))
    # our checkpoints' tokenizers start every text with BOS, as in training; lm-eval's hf model does not by default
    model_args = f"pretrained={model_dir},dtype=auto" + (",add_bos_token=True" if backend == "hf" else "")
    results = lm_eval.simple_evaluate(
        model=backend, model_args=model_args, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
        batch_size="auto" if backend == "vllm" else 16, gen_kwargs="temperature=0", **kwargs,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "harness_results.json").write_text(json.dumps(results.get("results", {}), indent=1, default=str))
    return results.get("results", {})
