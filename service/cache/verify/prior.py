"""The cold-start prior (guard score -> P(same answer)) and the project's one logistic fit.

The guard's score (`guard.NearMissGuard.verify(...).score`, 0..1) ranks pairs well
but is not a calibrated probability for a decision against an error budget.
`Prior` re-maps it as `P(same) = sigmoid(intercept + slope * logit(score))` (Platt
scaling). `semcache calibrate --prior` fits it (`fit_prior`) on labelled pairs:
qqp_dev, plus any pairs of the operator's, that pass the guard's floor and rules,
scored with the default int8 embedder; it writes `prior.json`, which `load_prior` reads.
The shipped `prior.json` beside this module is that command's output on qqp_dev.

`fit_logistic` is the one logistic fit: the guard's weights (`service.cache.calibrate`)
and this prior both come from it. It runs damped Newton steps in float64 to the optimum
(`penalised_newton`, which the live calibration also uses): no randomness, no
solver-dependent stopping, so the same data gives the same numbers bit for bit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_PRIOR",
    "PRIOR_C",
    "SHIPPED_PRIOR_PATH",
    "LogisticFit",
    "Prior",
    "PriorError",
    "dump_prior",
    "fit_logistic",
    "fit_prior",
    "load_prior",
    "logit",
    "penalised_newton",
    "sigmoid",
]

SHIPPED_PRIOR_PATH = Path(__file__).with_name("prior.json")
FORMAT_VERSION = 1
DECIMALS = 4
PRIOR_C = 1e3  # the prior's slope is nearly unpenalised: an L2 of 1e-3
_SCORE_EPSILON = 1e-6
_MAX_NEWTON_STEPS = 100
_STEP_TOLERANCE = 1e-12
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


@dataclass(frozen=True)
class LogisticFit:
    """P(label) = sigmoid(bias + weights · features)."""

    weights: tuple[float, ...]
    bias: float

    def probability(self, features: Sequence[float]) -> float:
        """The fitted probability (0..1) for one feature vector."""
        return sigmoid(self.bias + sum(w * x for w, x in zip(self.weights, features, strict=True)))


def _objective(x: Floats, y: Floats, base: Floats, precision: Floats, w: Floats) -> float:
    z = base + x @ w
    # log-likelihood of labels y under sigmoid(z), minus the Gaussian penalty
    return float(np.sum(y * z - np.logaddexp(0.0, z)) - 0.5 * w @ precision @ w)


def _newton(
    x: Floats, y: Floats, base: Floats, precision: Floats, iterations: int, tolerance: float
) -> tuple[Floats, bool]:
    """`penalised_newton`'s weights, and whether a step fell below `tolerance`."""
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
        if float(np.max(np.abs(step))) < tolerance:
            return w, True
    return w, False


def penalised_newton(
    x: Floats,
    y: Floats,
    base: Floats,
    precision: Floats,
    iterations: int = 50,
    tolerance: float = 1e-10,
) -> Floats:
    """MAP weights w of P(y) = sigmoid(base + x @ w) under a N(0, precision^-1) prior.

    Newton steps, halved until the penalised log-likelihood does not fall (plain
    Newton can oscillate and diverge when many rows share one value), until the step
    is below `tolerance` or `iterations` have run. Deterministic for given inputs.
    """
    return _newton(x, y, base, precision, iterations, tolerance)[0]


def fit_logistic(features: Floats, labels: Sequence[bool], c: float = 1.0) -> LogisticFit:
    """Fit an L2-penalised logistic regression, as scikit-learn's `LogisticRegression(C=c)`.

    Maximises `sum(log-likelihood) - ||weights||^2 / (2 c)`, the bias (intercept)
    unpenalised, by `penalised_newton` until a step is below 1e-12: the optimum,
    deterministically. The guard's weights use c=1; the prior `PRIOR_C`.

    Raises:
        ValueError: the shapes disagree, there are no rows, `c` <= 0, or no convergence.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[0] != y.shape[0] or c <= 0:
        raise ValueError(f"need rows of features {x.shape} matching labels {y.shape}, c > 0")
    design = np.column_stack([x, np.ones(x.shape[0])])
    precision = np.eye(design.shape[1]) / c
    precision[-1, -1] = 0.0
    theta, converged = _newton(
        design, y, np.zeros(x.shape[0]), precision, _MAX_NEWTON_STEPS, _STEP_TOLERANCE
    )
    if not converged:
        raise ValueError(f"logistic fit did not converge in {_MAX_NEWTON_STEPS} Newton steps")
    return LogisticFit(tuple(float(w) for w in theta[:-1]), float(theta[-1]))


def fit_prior(scores: Sequence[float], labels: Sequence[bool]) -> Prior:
    """Platt-scale guard scores against same-answer labels, rounded to 4 decimals.

    Raises:
        ValueError: `scores` and `labels` differ in length or are empty.
    """
    column = np.array([logit(s) for s in scores], dtype=np.float64).reshape(-1, 1)
    fit = fit_logistic(column, labels, c=PRIOR_C)
    return Prior(round(fit.bias, DECIMALS), round(fit.weights[0], DECIMALS))


class PriorError(ValueError):
    """A prior file is missing, not JSON, or not a prior; the message says what to do."""


def load_prior(path: Path | None = None) -> Prior:
    """The prior in `path` (written by `semcache calibrate --prior`); None: the shipped one.

    Raises:
        PriorError: the file cannot be read or holds no usable prior; the message names
            the file and how to fix it.
    """
    source = SHIPPED_PRIOR_PATH if path is None else path
    try:
        document = json.loads(source.read_text(encoding="utf-8"))
        prior = Prior(float(document["intercept"]), float(document["slope"]))
    except OSError as error:
        raise _prior_error(path, source, error.strerror or str(error)) from error
    except (ValueError, KeyError, TypeError) as error:
        detail = f"missing {error}" if isinstance(error, KeyError) else str(error)
        raise _prior_error(path, source, f"not a prior file ({detail})") from error
    if not (math.isfinite(prior.intercept) and math.isfinite(prior.slope) and prior.slope > 0):
        raise _prior_error(
            path, source, "the slope must be a positive number, the intercept finite"
        )
    return prior


def _prior_error(path: Path | None, source: Path, problem: str) -> PriorError:
    if path is None:
        fix = "the shipped file is part of the package: reinstall semcache"
    else:
        fix = (
            f"write it with `semcache calibrate --prior --out {path}`, or unset"
            " SEMCACHE_PRIOR_PATH to use the shipped prior"
        )
    return PriorError(f"cannot read the calibrated prior from {source}: {problem}; {fix}")


def dump_prior(prior: Prior, provenance: Mapping[str, Any]) -> str:
    """The JSON text of a prior file: stable (sorted provenance keys, no date), so a refit
    on the same data is the same bytes."""
    document: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "intercept": prior.intercept,
        "slope": prior.slope,
    }
    document.update(sorted((k, v) for k, v in provenance.items() if k not in document))
    return json.dumps(document, indent=2) + "\n"


DEFAULT_PRIOR = load_prior()
"""The shipped prior (`prior.json`), read at import; a server reads its own with
`load_prior(settings.prior_path)`."""
