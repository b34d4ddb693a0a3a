"""The guard's word matching (`guard._unmatched`, `guard._same_word`) gives what the
plain definition gives, while comparing only the words that can differ (issue 13)."""

from __future__ import annotations

import random

import pytest

from service.cache import guard


def _same_word_reference(a: str, b: str) -> bool:
    """The rule as written before it was made faster: equal; or a prefix of the other,
    both 4+ letters, at most 3 apart in length; or both 5+ letters and one edit apart
    (`_one_edit_apart`, which this change left as it was)."""
    if a == b:
        return True
    if min(len(a), len(b)) >= 4 and (a.startswith(b) or b.startswith(a)):
        return abs(len(a) - len(b)) <= 3
    return min(len(a), len(b)) >= 5 and guard._one_edit_apart(a, b)  # unchanged


def _unmatched_reference(mine: frozenset[str], theirs: frozenset[str]) -> frozenset[str]:
    return frozenset(w for w in mine if not any(_same_word_reference(w, v) for v in theirs))


def _near_words(draw: random.Random, count: int) -> list[str]:
    """Words from a small alphabet, many of them prefixes, typos and swaps of each other."""
    words = ["".join(draw.choice("abcde") for _ in range(draw.randint(1, 9))) for _ in range(8)]
    while len(words) < count:
        word = list(draw.choice(words))
        change = draw.randrange(4)
        spot = draw.randrange(len(word) + 1)
        if change == 0:
            word.insert(spot, draw.choice("abcde"))
        elif change == 1 and len(word) > 1:
            del word[min(spot, len(word) - 1)]
        elif change == 2 and len(word) > 1:
            spot = min(spot, len(word) - 2)
            word[spot], word[spot + 1] = word[spot + 1], word[spot]
        else:
            word.extend(draw.choice("abcde") for _ in range(draw.randint(0, 4)))
        words.append("".join(word))
    return words


def test_same_word_is_the_written_rule_on_near_words() -> None:
    draw = random.Random(13)
    words = _near_words(draw, 400)
    for a in words:
        for b in draw.sample(words, 40):
            assert guard._same_word(a, b) == _same_word_reference(a, b), (a, b)


def test_unmatched_is_the_written_rule_on_near_word_sets() -> None:
    draw = random.Random(7)
    words = _near_words(draw, 200)
    for _ in range(3000):
        mine = frozenset(draw.sample(words, draw.randint(0, 8)))
        theirs = frozenset(draw.sample(words, draw.randint(0, 8)))
        assert guard._unmatched(mine, theirs) == _unmatched_reference(mine, theirs)


def test_only_words_that_can_differ_are_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[str, str]] = []

    def counted(a: str, b: str) -> bool:
        compared.append((a, b))
        return _same_word_reference(a, b)

    monkeypatch.setattr(guard, "_same_word", counted)
    mine = frozenset({"reset", "password", "my", "how", "gardens"})
    theirs = frozenset({"reset", "password", "the", "garden"})
    assert guard._unmatched(mine, theirs) == frozenset({"my", "how"})
    # Shared words match as they stand and short ones only themselves: only "gardens"
    # is compared, with the longer words on the other side (not 5 x 4 comparisons).
    assert {a for a, _ in compared} == {"gardens"}
    assert len(compared) <= 3
