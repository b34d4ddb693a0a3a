"""`semcache calibrate`: refit the near-miss guard's weights, or (`--prior`) the cold-start prior.

The guard scores a (query, cached) pair with a logistic regression over
`guard.PairFeatures.vector()`; its weights live in `guard_weights.json`
(`guard_model.SHIPPED_WEIGHTS_PATH`). `semcache calibrate` rebuilds that file:

1. read `{"a", "b", "same_answer"}` lines (`../shared/data/qqp_dev.jsonl`, read in
   place: Quora's text is never copied, only the fitted numbers are written);
2. embed every question (default: the torch fp32 reference embedder, which the shipped
   weights were fitted with) and take each pair's cosine (float32 dot of unit vectors);
3. keep the pairs with cosine >= 0.6 that no hard rule vetoes (query=b, cached=a);
4. fit an L2-penalised logistic regression with C=1 and an unpenalised intercept
   (the objective of scikit-learn's `LogisticRegression(C=1)`) by Newton's method to
   its optimum (`verify.prior.fit_logistic`, the project's one logistic fit):
   deterministic, no solver tolerance in the result;
5. round to 4 decimals and write the file with its provenance.

Provenance of the weights shipped before this command existed: scikit-learn 1.9.1,
`LogisticRegression(C=1, solver="lbfgs")` at its default `tol=1e-4`, on the same 2,438
pairs. That lbfgs run stops short of the optimum; rounded, it differs from this exact fit
by 3.6e-3 (scope_one_sided), 1.7e-3 (unmatched_max_ge_3) and <= 5e-4 on the others.
`tests/test_calibrate.py` checks both facts with scikit-learn. Rule-generated synthetic
traps were tried in the original fit and made near-repeats worse, so they are not in it.

`semcache calibrate --prior [--pairs FILE ...]` fits the prior (`verify.prior`: guard
score -> P(same answer), Platt scaling) on qqp_dev plus the operator's pair files (same
format), embedded with the default onnx-int8 embedder: the pairs the guard's floor
(0.75) and hard rules let through, query=b, cached=a, scored by the shipped guard. It
writes `prior.json` (`verify.prior.dump_prior`): no date, so a refit on the same data
is the same bytes on the same CPU family (`int8_kernels`, see `embedding.cpu`), and
`tests/test_prior_file.py` checks the shipped file is.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from service.cache.guard import NearMissGuard, pair_features, veto_reason
from service.cache.guard_model import FEATURE_NAMES, GuardModel, dump_guard_model
from service.cache.verify.prior import PRIOR_C, Prior, dump_prior, fit_logistic, fit_prior
from service.embedding.base import Embedder, int8_kernels_of
from service.embedding.errors import EmbeddingModelError

__all__ = [
    "DEFAULT_DATA",
    "CalibrationError",
    "LabelledPair",
    "calibrate",
    "calibrate_prior",
    "fit_logistic",
    "guard_training_set",
    "prior_training_set",
    "read_pairs",
]

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "qqp_dev.jsonl"
SIMILARITY_MIN = 0.6  # pairs below it never reach the guard's score (its floor is 0.75)
DECIMALS = 4
Floats = npt.NDArray[np.float64]


class CalibrationError(Exception):
    """The labelled data cannot be used; the message says which file and why."""


@dataclass(frozen=True)
class LabelledPair:
    """Two questions and whether they deserve the same answer."""

    query: str
    cached: str
    same_answer: bool


def read_pairs(path: Path) -> list[LabelledPair]:
    """Read qqp-style JSONL: one `{"a", "b", "same_answer"}` object a line; query is b.

    Raises:
        CalibrationError: the file is missing, unreadable, or a line is malformed.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise CalibrationError(
            f"cannot read labelled pairs from {path}: {error.strerror}"
        ) from None
    except UnicodeDecodeError:
        raise CalibrationError(f"{path} is not UTF-8 text: give a JSONL file") from None
    pairs = []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
            pairs.append(LabelledPair(str(row["b"]), str(row["a"]), bool(row["same_answer"])))
        except (ValueError, KeyError, TypeError) as error:
            raise CalibrationError(
                f"{path}:{number}: expected {{'a': ..., 'b': ..., 'same_answer': ...}}: {error!r}"
            ) from None
    if not pairs:
        raise CalibrationError(f"{path} holds no labelled pairs")
    return pairs


def pair_similarities(embedder: Embedder, pairs: Sequence[LabelledPair]) -> list[float]:
    """Each pair's cosine, as the store would score it (float32 dot of unit vectors)."""
    texts = sorted({p.query for p in pairs} | {p.cached for p in pairs})
    vectors = embedder.embed(texts)
    row = {text: i for i, text in enumerate(texts)}
    return [float(np.dot(vectors[row[p.query]], vectors[row[p.cached]])) for p in pairs]


def guard_training_set(
    pairs: Sequence[LabelledPair], similarities: Sequence[float]
) -> tuple[Floats, list[bool]]:
    """The feature rows and labels the guard's score is fitted on.

    Pairs under `SIMILARITY_MIN` and pairs a hard rule vetoes never reach the score,
    so they are left out.
    """
    rows: list[tuple[float, ...]] = []
    labels: list[bool] = []
    for pair, similarity in zip(pairs, similarities, strict=True):
        if similarity < SIMILARITY_MIN:
            continue
        features = pair_features(pair.query, pair.cached, similarity)
        if veto_reason(features) is None:
            rows.append(features.vector())
            labels.append(pair.same_answer)
    return np.array(rows, dtype=np.float64).reshape(-1, len(FEATURE_NAMES)), labels


def calibrate(
    data: Path, pairs: Sequence[LabelledPair], embedder: Embedder, command: str
) -> GuardModel:
    """Fit the guard's weights on `pairs` (read from `data`), with provenance.

    Raises:
        CalibrationError: the kept pairs do not hold both labels.
    """
    features, labels = guard_training_set(pairs, pair_similarities(embedder, pairs))
    if len(set(labels)) < 2:
        raise CalibrationError(f"{data}: the kept pairs need both labels, got {len(labels)}")
    fit = fit_logistic(features, labels)
    provenance = {
        "data": {"file": data.name, "sha256": file_sha256(data), "pairs": len(pairs)},
        "embedder": embedder.model_id,
        "training": {
            "query": "b",
            "cached": "a",
            "similarity_min": SIMILARITY_MIN,
            "vetoed": "left out",
            "pairs": len(labels),
            "same_answer": sum(labels),
        },
        "fit": "L2 logistic regression, C=1, intercept unpenalised, Newton to the optimum,"
        f" rounded to {DECIMALS} decimals",
        "command": command,
        "date": datetime.datetime.now(datetime.UTC).date().isoformat(),
    }
    weights = tuple(round(w, DECIMALS) for w in fit.weights)
    return GuardModel(weights, round(fit.bias, DECIMALS), provenance)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prior_training_set(
    pairs: Sequence[LabelledPair], similarities: Sequence[float], guard: NearMissGuard
) -> tuple[list[float], list[bool]]:
    """Guard scores and labels of the pairs the guard's floor and hard rules let through.

    `guard` should have `accept_min=0`: the prior maps every score the rules allow.
    """
    scores: list[float] = []
    labels: list[bool] = []
    for pair, similarity in zip(pairs, similarities, strict=True):
        verdict = guard.verify(pair.query, pair.cached, similarity)
        if verdict.reason in ("ok", "identical"):
            scores.append(verdict.score)
            labels.append(pair.same_answer)
    return scores, labels


def calibrate_prior(
    sources: Sequence[tuple[Path, Sequence[LabelledPair]]], embedder: Embedder, command: str
) -> tuple[Prior, dict[str, Any]]:
    """Fit the prior on every source's pairs (read from its file), with provenance.

    Raises:
        CalibrationError: the kept pairs do not hold both labels.
    """
    pairs = [pair for _, chunk in sources for pair in chunk]
    guard = NearMissGuard(accept_min=0.0)
    scores, labels = prior_training_set(pairs, pair_similarities(embedder, pairs), guard)
    if len(set(labels)) < 2:
        names = ", ".join(str(path) for path, _ in sources)
        raise CalibrationError(f"{names}: the kept pairs need both labels, got {len(labels)}")
    provenance = {
        "fitted_on": [
            {"file": path.name, "sha256": file_sha256(path), "pairs": len(chunk)}
            for path, chunk in sources
        ],
        "pairs": len(labels),
        "same_answer": sum(labels),
        "embedder": embedder.model_id,
        "guard": {
            "similarity_min": guard.similarity_min,
            "weights": list(guard.model.weights),
            "bias": guard.model.bias,
        },
        "training": {"query": "b", "cached": "a", "kept": "guard floor and hard rules pass"},
        "fit": f"Platt scaling: logistic regression of same_answer on logit(guard score),"
        f" L2 1/{PRIOR_C:g} on the slope, intercept unpenalised, Newton to the optimum,"
        f" rounded to {DECIMALS} decimals",
        "command": command,
    }
    kernels = int8_kernels_of(embedder)
    if kernels is not None:  # int8 vectors, so the fit, differ by CPU family
        provenance["int8_kernels"] = kernels
    return fit_prior(scores, labels), provenance


def run(data: Path, out: Path | None, load_embedder: Callable[[], Embedder], command: str) -> int:
    """Calibrate the guard and write `out` (or print the file); errors are one line on stderr.

    The data is read before the embedder loads, so a wrong path fails at once.
    """
    try:
        check_out(out)
        pairs = read_pairs(data)
        model = calibrate(data, pairs, load_embedder(), command)
    except (CalibrationError, EmbeddingModelError) as error:
        print(f"semcache calibrate: {error}", file=sys.stderr)
        return 2
    _write(out, dump_guard_model(model), f"weights {list(model.weights)}, bias {model.bias}")
    return 0


def run_prior(
    files: Sequence[Path], out: Path | None, load_embedder: Callable[[], Embedder], command: str
) -> int:
    """Calibrate the prior on `files` and write `out` (or print it); errors are one line.

    Every file is read before the embedder loads, so a wrong path fails at once.
    """
    try:
        check_out(out)
        sources = [(path, read_pairs(path)) for path in files]
        prior, provenance = calibrate_prior(sources, load_embedder(), command)
    except (CalibrationError, EmbeddingModelError) as error:
        print(f"semcache calibrate: {error}", file=sys.stderr)
        return 2
    summary = f"intercept {prior.intercept}, slope {prior.slope} on {provenance['pairs']} pairs"
    _write(out, dump_prior(prior, provenance), summary)
    return 0


def check_out(out: Path | None) -> None:
    """Before any fit: `out` can be written (found from outside: a missing folder or a
    directory given as `--out` failed with a traceback, after the whole fit).

    Raises:
        CalibrationError: it is a directory, or its folder does not exist.
    """
    if out is None:
        return
    if out.is_dir():
        raise CalibrationError(f"--out {out} is a directory: give a file path")
    if not out.parent.is_dir():
        raise CalibrationError(f"--out {out}: the folder {out.parent} does not exist")


def _write(out: Path | None, text: str, summary: str) -> None:
    if out is None:
        sys.stdout.write(text)
        return
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}: {summary}", file=sys.stderr)
