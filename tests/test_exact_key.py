"""The exact layer's key: which differences in wording make another question.

Case, Unicode width, spacing and trailing punctuation do not; anything that can
change the answer does (an exact hit is served with no guard and P(wrong) 0).
"""

from __future__ import annotations

import pytest

from service.cache.scope import cache_key
from service.domain import ChatMessage, CompletionRequest


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("What is 3²?", "What is 32?"),
        ("What is 10³?", "What is 103?"),
        ("What is ½?", "What is 12?"),
        ("Compute 5!", "Compute 5"),
        ("Was bedeutet Maße?", "Was bedeutet Masse?"),
        # Found from outside (2026-12-02): all served as exact hits at P(wrong) 0.
        ("What does ls -l do?", "What does ls -L do?"),
        ("How many bytes are in 1 MB?", "How many bytes are in 1 Mb?"),
        ("Is CO toxic to humans?", "Is Co toxic to humans?"),
        ("What is IT?", "What is it?"),
        ("Was bedeutet Weg?", "Was bedeutet weg?"),
        ("What does len('a  b') return?", "What does len('a b') return?"),
        (
            "for i in range(3):\n    print(i)\nprint(1)",
            "for i in range(3):\n    print(i)\n    print(1)",
        ),
        ("Parse this CSV:\nname,age\nbob,5", "Parse this CSV: name,age bob,5"),
        ("What is n!", "What is n?"),
        ("Simplify (n+1)!/n!", "Simplify (n+1)!/n"),
        ("What does sudo !!", "What does sudo"),
        ("Explain the regex a+b?", "Explain the regex a+b"),
        # Found from outside (third round): the capital of a later line or sentence, of
        # a first word that is a name, "I" in code or maths, and a closing "!" count.
        ("Is this valid Python?\nTrue = 1", "Is this valid Python?\ntrue = 1"),
        ("Is this valid Python? None = 5", "Is this valid Python? none = 5"),
        ("Turkey population", "turkey population"),
        ("Polish sausage calories", "polish sausage calories"),
        ("Mb to MB", "mb to MB"),
        ("What does this print?\ni = 5\nprint(I)", "What does this print?\ni = 5\nprint(i)"),
        ("In SymPy what is exp(I*pi)?", "In SymPy what is exp(i*pi)?"),
        ("I = 5", "i = 5"),
        ("What does the Ruby method sort!", "What does the Ruby method sort?"),
        ("Compute ten!", "Compute ten"),
    ],
)
def test_questions_that_differ_in_meaning_never_share_an_exact_key(first: str, second: str) -> None:
    """Superscripts, fractions, "ß", a factorial's "!", case inside a sentence, line
    breaks and spaces inside quotes are kept (NFKC, case folding and squeezed spacing
    once made each pair one exact key, and served the first's answer for the second)."""
    assert _id(first) != _id(second)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("How do I reset my password?", "how do i reset my password"),
        ("ｈｅｌｌｏ　ｗｏｒｌｄ？", "hello world"),
        ("What  is   ML?  ", "what is ML"),
        ("Café?", "café"),
        ("Compute 5!", "compute 5!"),
        ("Как включить двухфакторную защиту?", "как включить двухфакторную защиту"),
    ],
)
def test_case_width_and_trailing_punctuation_still_share_an_exact_key(
    first: str, second: str
) -> None:
    assert _id(first) == _id(second)


def _id(text: str) -> str:
    request = CompletionRequest(messages=(ChatMessage("user", text),))
    return cache_key(request, "all-MiniLM-L6-v2/onnx-int8").point_id
