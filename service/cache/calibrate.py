"""`semcache calibrate`: refit the near-miss guard's weights from labelled pairs.

The guard scores a (query, cached) pair with a logistic regression over
`guard.PairFeatures.vector()`; its weights live in `guard_weights.json`
(`guard_model.SHIPPED_WEIGHTS_PATH`). This rebuilds that file:

1. read `{"a", "b", "same_answer"}` lines (`../shared/data/qqp_dev.jsonl`, read in
   place: Quora's text is never copied, only the fitted numbers are written);
2. embed every question (default: the torch fp32 reference embedder, which the shipped
   weights were fitted with) and take each pair's cosine (float32 dot of unit vectors);
3. keep the pairs with cosine >= 0.6 that no hard rule vetoes (query=b, cached=a);
4. fit an L2-penalised logistic regression with C=1 and an unpenalised intercept
   (the objective of scikit-learn's `LogisticRegression(C=1)`) by Newton's method to
   its optimum: deterministic, no solver tolerance in the result;
5. round to 4 decimals and write the file with its provenance.

Provenance of the weights shipped before this command existed: scikit-learn 1.9.1,
`LogisticRegression(C=1, solver="lbfgs")` at its default `tol=1e-4`, on the same 2,438
pairs. That lbfgs run stops short of the optimum; rounded, it differs from this exact fit
by 3.6e-3 (scope_one_sided), 1.7e-3 (unmatched_max_ge_3) and <= 5e-4 on the others.
`tests/test_calibrate.py` checks both facts with scikit-learn. Rule-generated synthetic
traps were tried in the original fit and made near-repeats worse, so they are not in it.

`fit_logistic` and `calibrate_scores` are general (features in, weights and bias out;
guard score in, probability out) for calibrating other models on labelled pairs.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.cache.guard import pair_features, veto_reason
from service.cache.guard_model import FEATURE_NAMES, GuardModel, dump_guard_model
from service.embedding.base import Embedder
from service.embedding.errors import EmbeddingModelError

__all__ = [
    "DEFAULT_DATA",
    "CalibrationError",
    "LabelledPair",
    "LogisticFit",
    "ScoreCalibration",
    "calibrate",
    "calibrate_scores",
    "fit_logistic",
    "guard_training_set",
    "read_pairs",
]

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "qqp_dev.jsonl"
SIMILARITY_MIN = 0.6  # pairs below it never reach the guard's score (its floor is 0.75)
DECIMALS = 4
_MAX_NEWTON_STEPS = 100
_STEP_TOLERANCE = 1e-12
_SCORE_EPSILON = 1e-6
Floats = npt.NDArray[np.float64]


class CalibrationError(Exception):
    """The labelled data cannot be used; the message says which file and why."""


@dataclass(frozen=True)
class LabelledPair:
    """Two questions and whether they deserve the same answer."""

    query: str
    cached: str
    same_answer: bool


@dataclass(frozen=True)
class LogisticFit:
    """P(label) = sigmoid(bias + weights · features)."""

    weights: tuple[float, ...]
    bias: float

    def probability(self, features: Sequence[float]) -> float:
        """The fitted probability (0..1) for one feature vector."""
        z = self.bias + sum(w * x for w, x in zip(self.weights, features, strict=True))
        return 0.5 * (1.0 + math.tanh(0.5 * z))


@dataclass(frozen=True)
class ScoreCalibration:
    """Maps a guard score (0..1) to P(same answer): Platt scaling on logit(score)."""

    fit: LogisticFit

    def probability(self, score: float) -> float:
        """P(same answer) for a pair the guard scored `score`."""
        clipped = min(max(score, _SCORE_EPSILON), 1.0 - _SCORE_EPSILON)
        return self.fit.probability((math.log(clipped / (1.0 - clipped)),))


def fit_logistic(features: Floats, labels: Sequence[bool], c: float = 1.0) -> LogisticFit:
    """Fit an L2-penalised logistic regression, as scikit-learn's `LogisticRegression(C=c)`.

    Minimises `sum(log-loss) + ||weights||^2 / (2 c)`, the intercept unpenalised, by
    Newton steps until a step is below 1e-12: the optimum, deterministically.

    Raises:
        ValueError: the shapes disagree, there are no rows, `c` <= 0, or no convergence.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[0] != y.shape[0] or c <= 0:
        raise ValueError(f"need rows of features {x.shape} matching labels {y.shape}, c > 0")
    design = np.column_stack([x, np.ones(x.shape[0])])
    penalty = np.eye(design.shape[1]) / c
    penalty[-1, -1] = 0.0
    theta = np.zeros(design.shape[1])
    for _ in range(_MAX_NEWTON_STEPS):
        p = 0.5 * (1.0 + np.tanh(0.5 * (design @ theta)))
        gradient = design.T @ (p - y) + penalty @ theta
        hessian = (design.T * (p * (1.0 - p))) @ design + penalty
        step = np.linalg.solve(hessian, gradient)
        theta = theta - step
        if float(np.max(np.abs(step))) < _STEP_TOLERANCE:
            return LogisticFit(tuple(float(w) for w in theta[:-1]), float(theta[-1]))
    raise ValueError(f"logistic fit did not converge in {_MAX_NEWTON_STEPS} Newton steps")


def calibrate_scores(scores: Sequence[float], labels: Sequence[bool]) -> ScoreCalibration:
    """Fit the map from guard score to P(same answer) on labelled pairs (Platt scaling).

    Raises:
        ValueError: `scores` and `labels` differ in length or are empty.
    """
    clipped = np.clip(np.asarray(scores, dtype=np.float64), _SCORE_EPSILON, 1 - _SCORE_EPSILON)
    column = np.log(clipped / (1.0 - clipped)).reshape(-1, 1)
    return ScoreCalibration(fit_logistic(column, labels, c=1e6))


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


def run(data: Path, out: Path | None, load_embedder: Callable[[], Embedder], command: str) -> int:
    """Calibrate and write `out` (or print the file); errors are one line on stderr.

    The data is read before the embedder loads, so a wrong path fails at once.
    """
    try:
        pairs = read_pairs(data)
        model = calibrate(data, pairs, load_embedder(), command)
    except (CalibrationError, EmbeddingModelError) as error:
        print(f"semcache calibrate: {error}", file=sys.stderr)
        return 2
    text = dump_guard_model(model)
    if out is None:
        sys.stdout.write(text)
        return 0
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}: weights {list(model.weights)}, bias {model.bias}", file=sys.stderr)
    return 0
