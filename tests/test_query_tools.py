"""The query agent's tools (workers/agents/tools.py): the calculator, which evaluates arithmetic safely and within
bounds, and text statistics. Pure: no Redis."""

from __future__ import annotations

import pytest

from workers.agents.tools import calculate, text_stats


@pytest.mark.parametrize(
    ("expression", "answer"),
    [
        ("2+3*4", "2+3*4 = 14"),
        ("(2+3)*4", "(2+3)*4 = 20"),
        ("2^10", "2^10 = 1024"),
        ("2**3**2", "2**3**2 = 512"),
        ("7/2", "7/2 = 3.5"),
        ("8/2", "8/2 = 4"),
        ("7//2 + 7%3", "7//2 + 7%3 = 4"),
        ("-3+5", "-3+5 = 2"),
        ("1/0", "1/0 is undefined (division by zero)"),
        ("What is 12 * 3, please?", "12 * 3 = 36"),
        ("  (1 + 1) * 21  ", "(1 + 1) * 21 = 42"),
        ("hello there", "no arithmetic expression found"),
        ("", "no arithmetic expression found"),
        ("the year 2024", "no arithmetic expression found"),
        ("__import__('os').system('id')", "no arithmetic expression found"),
        ("2 + __import__('os')", "no arithmetic expression found"),
    ],
)
def test_calculator_finds_the_arithmetic_in_the_text_and_answers_it(expression: str, answer: str) -> None:
    assert calculate({"expression": expression}) == answer


@pytest.mark.parametrize(
    ("expression", "mentions"),
    [
        ("2+*3", "Cannot evaluate"),
        ("((2)", "Cannot evaluate"),
        ("2^1001", "Exponents above 1000"),
        ("9^(10^4)", "Exponents above 1000"),
        ("((9^999)^999)^9", "exceed 10000 bits"),
        ("10^999*10^999*10^999*10^999*10^999", "exceed 10000 bits"),
    ],
)
def test_calculator_refuses_what_it_cannot_or_must_not_evaluate(expression: str, mentions: str) -> None:
    with pytest.raises(ValueError, match=mentions.replace("(", r"\(")):
        calculate({"expression": expression})


def test_calculator_keeps_scientific_notation_whole() -> None:
    assert calculate({"expression": "what is 1e3+1?"}) == "1e3+1 = 1001"


def test_text_stats_counts_words_sentences_and_key_terms() -> None:
    assert text_stats({"text": "The cat sat. The cat ran! Dogs bark?"}) == (
        "8 words, 3 sentences, 36 characters; key terms: dogs, bark"
    )
    assert text_stats({}) == "0 words, 0 sentences, 0 characters; key terms: none"
