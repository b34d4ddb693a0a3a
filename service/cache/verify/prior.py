"""The cold-start prior: guard score -> probability that the cached answer fits.

The guard's score (`guard.NearMissGuard.verify(...).score`, 0..1) ranks pairs well
but is not a calibrated probability for a decision against an error budget.
`Prior` re-maps it as `P(same) = sigmoid(intercept + slope * logit(score))` (Platt
scaling), fitted by `fit_prior` on labelled pairs: qqp_dev pairs that pass the
guard's floor and rules, scored with the default int8 embedder. `fit_logistic` is a
damped Newton fit in float64 with a small ridge: no randomness, no solver-dependent
stopping, so the same data gives the same numbers bit for bit on one machine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_PRIOR",
    "Prior",
    "fit_logistic",
    "fit_prior",
    "logit",
    "penalised_newton",
    "sigmoid",
]

_SCORE_EPSILON = 1e-6
Floats = npt.NDArray[np.float64]


def sigmoid(z: float) -> float:
    """The logistic function, safe for large |z|."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def logit(p: float) -> float:
    """log(p / (1 - p)), with p clipped away from 0 and 1."""
    p = min(max(p, _SCORE_EPSILON), 1.0 - _SCORE_EPSILON)
    return math.log(p / (1.0 - p))


@dataclass(frozen=True)
class Prior:
    """A calibrated map from guard score (0..1) to P(same answer)."""

    intercept: float
    slope: float

    def logit_same(self, score: float) -> float:
        """The log-odds that a pair at guard score `score` deserves the same answer."""
        return self.intercept + self.slope * logit(score)

    def p_same(self, score: float) -> float:
        """P(same answer) for a pair at guard score `score`."""
        return sigmoid(self.logit_same(score))


def _objective(x: Floats, y: Floats, base: Floats, precision: Floats, w: Floats) -> float:
    z = base + x @ w
    # log-likelihood of labels y under sigmoid(z), minus the Gaussian penalty
    return float(np.sum(y * z - np.logaddexp(0.0, z)) - 0.5 * w @ precision @ w)


def penalised_newton(
    x: Floats, y: Floats, base: Floats, precision: Floats, iterations: int = 50
) -> Floats:
    """MAP weights w of P(y) = sigmoid(base + x @ w) under a N(0, precision^-1) prior.

    Newton steps, halved until the penalised log-likelihood does not fall (plain
    Newton can oscillate and diverge when many rows share one value), until the step
    is below 1e-10 or `iterations` have run. Deterministic for given inputs.
    """
    w = np.zeros(x.shape[1], dtype=np.float64)
    current = _objective(x, y, base, precision, w)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(base + x @ w)))
        gradient = x.T @ (y - p) - precision @ w
        hessian = (x.T * (p * (1.0 - p))) @ x + precision
        step = np.linalg.solve(hessian, gradient)
        for _ in range(30):
            candidate = _objective(x, y, base, precision, w + step)
            if candidate >= current:
                break
            step = step / 2.0
        w, current = w + step, max(candidate, current)
        if float(np.max(np.abs(step))) < 1e-10:
            break
    return w


def fit_logistic(features: Floats, labels: Sequence[bool], ridge: float = 1e-3) -> Floats:
    """Weights of a logistic regression (first column is usually the constant 1).

    Raises:
        ValueError: the shapes disagree or there are no rows.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"features {x.shape} and labels {y.shape} must have the same rows")
    return penalised_newton(x, y, np.zeros(x.shape[0]), ridge * np.eye(x.shape[1]))


def fit_prior(scores: Sequence[float], labels: Sequence[bool]) -> Prior:
    """Platt-scale guard scores against same-answer labels.

    Raises:
        ValueError: `scores` and `labels` differ in length or are empty.
    """
    column = np.array([logit(s) for s in scores], dtype=np.float64)
    features = np.column_stack([np.ones_like(column), column])
    intercept, slope = fit_logistic(features, labels)
    return Prior(round(float(intercept), 4), round(float(slope), 4))


# Fitted by `python -m benchmarks.stream_replay calibrate` on ../shared/data/qqp_dev.jsonl
# (pairs with cosine >= 0.75 that no guard rule vetoes; query=b, cached=a; onnx-int8).
DEFAULT_PRIOR = Prior(intercept=-0.2032, slope=1.2994)
