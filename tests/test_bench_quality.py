"""`semcache bench quality`'s budget mode: the service's default hit decision, side by side.

Small and in process: a bag-of-words embedder, a real Qdrant Edge store, two pairs.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from benchmarks import quality
from benchmarks.quality import DELTAS, Pair, Setting, budget_setting
from service.cache.guard import NearMissGuard
from service.cache.verify.verifier import BudgetSettings
from service.config import Settings
from service.domain import ChatMessage
from service.embedding.fake import HashingEmbedder

# The guard accepts the first (score 0.86) and refuses the second (0.75 < 0.79);
# the second is an everyday form of its `a` ("What is" / "What's"), so the budget
# serves it as same_form even at delta 0, where it refuses the first.
NEAR_REPEAT = (
    "how do I reset my password on the website today",
    "how do I reset my password on the website",
)
SAME_FORM = ("What is the capital city of France", "What's the capital city of France")


def _pair(number: int, a: str, b: str) -> Pair:
    return Pair(f"p{number}", "g", (ChatMessage("user", a),), (ChatMessage("user", b),), True)


PAIRS = [_pair(0, *NEAR_REPEAT), _pair(1, *SAME_FORM)]


def _served(tmp_path: Path, settings: list[Setting]) -> list[dict[str, object]]:
    embedder = quality.MemoEmbedder(HashingEmbedder())
    return asyncio.run(quality.run_dataset("t", embedder, tmp_path, settings, {}, lambda: PAIRS))


def test_the_sweep_has_the_budget_at_each_delta_with_no_exploration() -> None:
    budgeted = [s for s in quality._settings(Settings()) if s.mode == "budget"]

    assert [s.value for s in budgeted] == list(DELTAS) == [0.005, 0.01, 0.02]
    assert [s.budget for s in budgeted] == [
        BudgetSettings(d, {}, exploration_share=0.0, audit_share=0.0) for d in DELTAS
    ]


def test_the_budget_guard_is_built_from_the_service_settings() -> None:
    service = Settings(similarity_min=0.8, guard_accept_min=0.9, context_similarity_min=0.6)

    verifier = budget_setting(0.01, service).verifier

    assert isinstance(verifier, NearMissGuard)
    assert (verifier.similarity_min, verifier.accept_min, verifier.context_min) == (0.8, 0.9, 0.6)


def test_the_budget_mode_decides_by_the_budget_not_by_the_guards_accept(tmp_path: Path) -> None:
    guard = Setting("guard", 0.79, NearMissGuard(0.75, 0.79))
    decisions: dict[tuple[str, str, float], list[str]] = {}
    embedder = quality.MemoEmbedder(HashingEmbedder())

    asyncio.run(
        quality.run_dataset(
            "t", embedder, tmp_path, [guard, budget_setting(0.0)], decisions, lambda: PAIRS
        )
    )

    near, same = (quality._fingerprint(p.a) for p in PAIRS)
    assert decisions[("t", "guard", 0.79)] == [near, ""]
    assert decisions[("t", "budget", 0.0)] == ["", same]


def test_an_explored_request_is_counted_and_not_served(tmp_path: Path) -> None:
    exploring = Setting("budget", 0.0, NearMissGuard(), BudgetSettings(0.0, {}, 1.0, 0.0))

    (row,) = _served(tmp_path, [exploring])

    assert row["explored_pct"] == 50.0  # the near repeat goes upstream to be judged
    assert row["served_pct"] == 50.0  # only the same-form question is served


def test_the_tables_label_delta_and_say_there_is_no_exploration() -> None:
    assert quality.setting_label("budget", 0.005) == "δ = 0.005"
    assert "no exploration" in quality.BUDGET_NOTE
    assert "not served" in quality.BUDGET_NOTE


def test_a_missing_qqp_file_stops_the_run_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found from outside: with the data folder missing, `bench quality` ran the 23
    fow-cache settings (49 lines, about 4 s) before it said the qqp file was missing."""
    from benchmarks.data import MissingDataError
    from benchmarks.quality import run

    class Untouchable:
        def __getattr__(self, name: str) -> object:
            raise AssertionError(f"the embedder was used ({name}) before the data check")

    with pytest.raises(MissingDataError):
        run(tmp_path, Untouchable(), ["fow-pairs", "qqp"], data=tmp_path / "none.jsonl")  # type: ignore[arg-type]
    assert "quality fow-pairs" not in capsys.readouterr().err
