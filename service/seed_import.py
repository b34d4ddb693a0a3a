"""`semcache import FILE.jsonl`: seed a running service with curated answers, in batches.

Each line of the file is one JSON object `{"question": ..., "answer": ...}`
(blank lines are skipped; any other field is an error naming the line, as the
scope is the command's). The pairs go to PutEntries through the thin client,
`batch_size` at a time, with a progress line on stderr; an entry the service
refuses is reported with its line number and the rest go on. A line asking the
same question as an earlier one (the same exact form: one entry per question)
is refused and reported, whatever the batches: found from outside, a repeat in
another batch silently replaced the earlier answer, and one in the same batch
was refused, so which answer stayed depended on `--batch-size`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from service.validation import MAX_SEEDS_PER_CALL

if TYPE_CHECKING:
    from semcache_client import SemcacheClient
    from semcache_client.types import EntryScope

Pair = tuple[str, str]


@dataclass(frozen=True)
class Line:
    """One question/answer pair and the file line it came from (1-based)."""

    number: int
    pair: Pair


@dataclass
class ImportTotals:
    """How many entries were stored and how many the service refused."""

    stored: int = 0
    failed: int = 0


def read_lines(path: Path) -> list[Line]:
    """The pairs of a JSONL file, each with its line number.

    Raises:
        ValueError: the file cannot be read, or a line is not a
            `{"question": str, "answer": str}` object (the message names the line).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None
    return [
        Line(number, _pair(path, number, raw))
        for number, raw in enumerate(text.splitlines(), start=1)
        if raw.strip()
    ]


def _pair(path: Path, number: int, raw: str) -> Pair:
    where = f"{path}:{number}"
    try:
        value = json.loads(raw)
    except ValueError as error:
        raise ValueError(f"{where}: not JSON ({error})") from None
    question = value.get("question") if isinstance(value, dict) else None
    answer = value.get("answer") if isinstance(value, dict) else None
    if not isinstance(question, str) or not isinstance(answer, str):
        raise ValueError(f'{where}: expected {{"question": "...", "answer": "..."}}')
    extra = sorted(set(value) - {"question", "answer"})
    if extra:
        raise ValueError(
            f"{where}: {extra[0]!r} is not a field of a line, which holds only question and"
            " answer (the namespace, TTL and model are the command's: --namespace, --ttl-s,"
            " --model)"
        )
    return question, answer


def repeated(lines: Sequence[Line]) -> dict[int, int]:
    """The lines that ask the same question as an earlier one: line number -> the
    earlier line's (the same exact form, as the service's exact key has it)."""
    from service.cache.scope import exact_form

    first: dict[str, int] = {}
    repeats: dict[int, int] = {}
    for line in lines:
        earlier = first.setdefault(exact_form(line.pair[0]), line.number)
        if earlier != line.number:
            repeats[line.number] = earlier
    return repeats


def _without_repeats(lines: Sequence[Line], totals: ImportTotals, progress: TextIO) -> list[Line]:
    """`lines` but those repeating an earlier line's question, each reported and counted
    as failed."""
    repeats = repeated(lines)
    for number, earlier in repeats.items():
        totals.failed += 1
        progress.write(
            f"line {number}: the same question as line {earlier} (one entry per question);"
            " not sent: keep one answer for it\n"
        )
    return [line for line in lines if line.number not in repeats]


def import_lines(
    client: SemcacheClient,
    lines: Sequence[Line],
    batch_size: int,
    scope: EntryScope,
    progress: TextIO,
) -> ImportTotals:
    """Send `lines` with PutEntries, `batch_size` per call, reporting on `progress`.

    Raises:
        ValueError: `batch_size` is not 1 to `MAX_SEEDS_PER_CALL`.
        SemcacheError: a whole call failed (e.g. the service is unreachable).
    """
    if not 1 <= batch_size <= MAX_SEEDS_PER_CALL:
        # found from outside: 5000 failed the whole import at the service's limit
        raise ValueError(
            f"--batch-size is {batch_size}; use 1 to {MAX_SEEDS_PER_CALL} (PutEntries' limit)"
        )
    totals = ImportTotals()
    sending = _without_repeats(lines, totals, progress)
    done = len(lines) - len(sending)  # the repeats, reported already
    for start in range(0, len(sending), batch_size):
        batch = sending[start : start + batch_size]
        failures = _failures(batch, _put(client, batch, scope, totals))
        totals.failed += len(failures)
        totals.stored += len(batch) - len(failures)
        done += len(batch)
        status = f"{done}/{len(lines)} lines: {totals.stored} stored, {totals.failed} failed"
        _report(progress, failures, status)
    if progress.isatty():
        progress.write("\n")  # the last progress line ends
    return totals


def _put(
    client: SemcacheClient, batch: Sequence[Line], scope: EntryScope, totals: ImportTotals
) -> Sequence[object]:
    """PutEntries' result for each of `batch`.

    Raises:
        SemcacheError: the call failed; its details say what the import did before it.
    """
    from semcache_client import SemcacheError

    try:
        return client.put_entries([line.pair for line in batch], **scope)
    except SemcacheError as error:
        if totals.stored or totals.failed:
            sent = (
                f"the lines before line {batch[0].number} were sent ({totals.stored} stored,"
                f" {totals.failed} failed), none from it on is confirmed; importing the file"
                " again is safe: each question's entry is replaced, not added twice"
            )
        else:
            sent = "nothing was stored"
        raise type(error)(error.code, f"{error.details}; {sent}") from error


def _failures(batch: Sequence[Line], results: Sequence[object]) -> list[str]:
    """A report line for each of `batch` that PutEntries refused."""
    from semcache_client import ItemFailure

    return [
        f"line {line.number}: {result.code.name}: {_unindexed(result.message)}\n"
        for line, result in zip(batch, results, strict=True)
        if isinstance(result, ItemFailure)
    ]


def _report(progress: TextIO, failures: Sequence[str], status: str) -> None:
    """The failures on lines of their own, then the progress line (rewritten in place
    on a terminal, where the escape code clears the last one; a line each elsewhere)."""
    terminal = progress.isatty()
    if failures:
        progress.write(("\r\033[K" if terminal else "") + "".join(failures))
    progress.write(("\r" if terminal else "") + status + ("" if terminal else "\n"))
    progress.flush()


_ENTRY_INDEX = re.compile(r"^entries\[\d+\]: ")


def _unindexed(message: str) -> str:
    """A failure's message without the service's `entries[i]: ` (the index in one call,
    not in the file: the line number says which instead)."""
    return _ENTRY_INDEX.sub("", message)
