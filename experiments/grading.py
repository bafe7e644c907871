"""Grading of generated answers: pull the number after the answer marker, compare with math_verify.

math_verify parses both sides into sympy and compares numerically (so "26" == "26.0" == "52/2").
If it raises (its signal-based timeouts fail outside the main thread, sympy can choke on odd input)
we fall back to an exact numeric comparison, so grading never crashes an evaluation.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Optional

ANSWER_MARKERS = ("Answer:", "A:")  # the eval format's answer prefix, then the corpus' "Q: ... A: 26."
# optional sign, digits with optional thousands separators, optional decimals or a fraction
_NUMBER = re.compile(r"-?\s*\d+(?:,\d{3})*(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?")


def extract_answer(text: Optional[str], markers: tuple[str, ...] = ANSWER_MARKERS) -> Optional[str]:
    """The number after the last answer marker ("Answer:" first, then "A:"); None if there is none.

    The last marker counts because a model may restate the question ("... A: ... Answer: 26").
    """
    if not text:
        return None
    for marker in markers:
        pos = text.rfind(marker)
        if pos < 0:
            continue
        tail = text[pos + len(marker) :]
        # the number must be the first thing after the marker (spaces aside): "Answer: x = 3" is not 3
        m = _NUMBER.match(tail.lstrip())
        if m is None:
            return None
        return re.sub(r"\s+", "", m.group(0)).replace(",", "")
    return None


def _as_fraction(s: str) -> Optional[Fraction]:
    try:
        return Fraction(s.replace(",", "").strip())
    except (ValueError, ZeroDivisionError):
        return None


def _numeric_equal(pred: str, gold: str) -> bool:
    a, b = _as_fraction(pred), _as_fraction(gold)
    return a is not None and b is not None and a == b


def is_correct(pred: Optional[str], gold: str) -> bool:
    """Whether ``pred`` equals ``gold`` mathematically (math_verify; exact numeric fallback)."""
    if pred is None or not str(pred).strip():
        return False
    pred, gold = str(pred).strip(), str(gold).strip()
    try:
        from math_verify import parse, verify

        gold_parsed = parse(gold, raise_on_error=True)
        pred_parsed = parse(pred, raise_on_error=True)
        if not gold_parsed or not pred_parsed:  # nothing math-like on a side: only exact numbers count
            return _numeric_equal(pred, gold)
        return bool(verify(gold_parsed, pred_parsed, raise_on_error=True))
    except Exception:  # noqa: BLE001 - any math_verify failure falls back to exact comparison
        return _numeric_equal(pred, gold)
