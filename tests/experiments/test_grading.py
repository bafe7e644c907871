"""Answer extraction and grading on real cases."""

import threading

import pytest

import experiments.grading as grading
from experiments.grading import extract_answer, is_correct


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Answer: 26", "26"),
        (" Answer: 26.\n", "26"),
        ("Q: 3*7+5? A: 26.", "26"),
        ("Answer: -3", "-3"),
        ("Answer: - 3", "-3"),
        ("Answer: 1,000 apples", "1000"),
        ("Answer: 26.5", "26.5"),
        ("Answer: 3/4", "3/4"),
        ("Answer:26", "26"),
        ("Q: 1+2? A: 3. Answer: 4", "4"),  # "Answer:" wins over "A:"
        ("3*7=21. 21+5=26.", None),  # no marker: no answer, even though numbers are there
        ("Answer: x = 3", None),
        ("Answer: banana", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "pred, gold, ok",
    [
        ("26", "26", True),
        ("26.0", "26", True),
        ("26.", "26", True),
        ("-3", "-3", True),
        ("3", "-3", False),
        ("27", "26", False),
        ("1/2", "0.5", True),
        ("1000", "1,000", True),
        ("banana", "26", False),
        (None, "26", False),
        ("", "26", False),
    ],
)
def test_is_correct(pred, gold, ok):
    assert is_correct(pred, gold) is ok


def test_end_to_end_extract_then_grade():
    assert is_correct(extract_answer("3*7=21. 21+5=26. Answer: 26"), "26")
    assert not is_correct(extract_answer("Answer: 25"), "26")


def test_fallback_when_math_verify_raises(monkeypatch):
    import math_verify

    def boom(*a, **k):
        raise RuntimeError("sympy exploded")

    monkeypatch.setattr(math_verify, "parse", boom)
    assert is_correct("26.0", "26") is True
    assert is_correct("25", "26") is False
    assert grading._numeric_equal("3/4", "0.75")


def test_grading_in_a_worker_thread():
    # math_verify's signal timeouts cannot run outside the main thread: we must still grade
    out = {}
    t = threading.Thread(target=lambda: out.update(ok=is_correct("26.0", "26"), bad=is_correct("2", "26")))
    t.start()
    t.join()
    assert out == {"ok": True, "bad": False}
