"""Answers from a labelled question stream: one canned answer per intent cluster.

`semcache simulate-upstream --answers FILE` reads a JSONL stream of
`{"q": question, "cluster": id}` lines (like `../shared/data/qqp_stream_dev.jsonl`)
and answers each question it knows (matched on `service.cache.scope.normalise`d
text) with its cluster's canned answer, `ANSWER[<cluster>]: <text>`. The text
depends only on the cluster id, so every paraphrase in a cluster gets the same
answer byte for byte and different clusters get different answers: whether a
cached answer was right can be read off its tag, and the `exact` answer judge
says "same" exactly when the clusters match. Questions not in the file are
answered as without it.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from pathlib import Path

from service.cache.scope import normalise

__all__ = ["answer_tag", "canned_answer", "cluster_of", "load_answer_stream"]

_SENTENCES = 2
_FACTS = (
    "the first thing to check is the setting that controls it",
    "most people find the official guide the quickest route",
    "it usually takes a few minutes and no special tools",
    "the answer depends mostly on where you live",
    "the cost is small compared with the time it saves",
    "a second opinion rarely changes the outcome",
    "the common mistake is skipping the first step",
    "experts agree on the basics but not on the details",
)


def load_answer_stream(path: Path) -> dict[str, str]:
    """Normalised question -> cluster id, from a `{"q", "cluster"}` JSONL file.

    A question asked in two clusters keeps the first (the stream's labels never do this
    for one normalised text, but hand-made files may).

    Raises:
        ValueError: the file cannot be read, or a line is not `{"q": str, "cluster": str}`;
            the message names the file and line.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ValueError(f"{path}: cannot read the answer stream: {error}") from error
    clusters: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not JSON: {error}") from error
        question, cluster = _fields(record)
        if question is None or cluster is None:
            raise ValueError(f'{path}:{number}: expected {{"q": str, "cluster": str}}')
        clusters.setdefault(normalise(question), cluster)
    return clusters


def _fields(record: object) -> tuple[str | None, str | None]:
    if not isinstance(record, dict):
        return None, None
    question, cluster = record.get("q"), record.get("cluster")
    if not isinstance(question, str) or not isinstance(cluster, str) or not cluster:
        return None, None
    return question, cluster


def cluster_of(answers: Mapping[str, str], question: str) -> str | None:
    """The cluster `question` belongs to in `answers`, None if it is not there."""
    return answers.get(normalise(question)) if answers else None


def answer_tag(cluster: str) -> str:
    """`ANSWER[<cluster>]:`, the prefix every canned answer of `cluster` starts with."""
    return f"ANSWER[{cluster}]:"


def canned_answer(cluster: str) -> str:
    """The cluster's answer: its tag, then sentences chosen by a hash of the cluster id."""
    seed = int.from_bytes(hashlib.sha256(cluster.encode("utf-8")).digest()[:8], "big")
    rng = random.Random(seed)
    sentences = [rng.choice(_FACTS).capitalize() + "." for _ in range(_SENTENCES)]
    return " ".join([answer_tag(cluster), *sentences])
