"""`semcache calibrate`: the guard's shipped weights are what the command fits.

The fast tests check the solver against scikit-learn's objective and the command's
error handling; the slow ones embed qqp_dev (about 40 s with the torch embedder) and
compare the fit with the shipped `guard_weights.json`. The prior's file is tested in
`tests/test_prior_file.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.cache import calibrate as cal
from service.cache.guard import NearMissGuard, pair_features
from service.cache.guard_model import (
    SHIPPED_WEIGHTS_PATH,
    GuardModel,
    GuardModelError,
    dump_guard_model,
    load_guard_model,
)
from service.cache.verify.prior import PRIOR_C, fit_logistic, fit_prior
from service.cli import main

# The literals guard.py held before the weights moved to guard_weights.json.
_LITERALS = (8.2521, -0.0988, -0.2392, 0.6579, -0.2581, -0.4115, 0.1383, -5.9982)


def _synthetic(seed: int, rows: int = 600) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.uniform(0.6, 1.0, rows), rng.integers(0, 2, (rows, 3))])
    z = -6.0 + 8.0 * x[:, 0] - 0.5 * x[:, 1] + 0.7 * x[:, 3]
    return x, rng.uniform(size=rows) < 1.0 / (1.0 + np.exp(-z))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_reaches_scikit_learns_c1_optimum(seed: int) -> None:
    linear_model = pytest.importorskip("sklearn.linear_model")
    x, y = _synthetic(seed)
    tight = linear_model.LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000).fit(x, y)
    fit = cal.fit_logistic(x, list(y))
    assert np.allclose(fit.weights, tight.coef_[0], atol=1e-6)
    assert fit.bias == pytest.approx(float(tight.intercept_[0]), abs=1e-6)


def test_fit_is_deterministic_and_rejects_bad_shapes() -> None:
    x, y = _synthetic(3)
    assert cal.fit_logistic(x, list(y)) == cal.fit_logistic(x.copy(), list(y))
    with pytest.raises(ValueError, match="matching labels"):
        cal.fit_logistic(x, list(y)[:-1])


def test_prior_is_the_same_fit_as_the_guards_at_c_1000() -> None:
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(7)
    scores = rng.uniform(0.01, 0.99, 5_000)
    column = np.log(scores / (1 - scores))
    labels = rng.uniform(size=scores.size) < 1.0 / (1.0 + np.exp(-(0.5 + 2.0 * column)))
    tight = linear_model.LogisticRegression(C=PRIOR_C, tol=1e-12, max_iter=10_000)
    tight.fit(column.reshape(-1, 1), labels)
    prior = fit_prior(list(scores), list(labels))
    assert prior.slope == round(float(tight.coef_[0][0]), 4)
    assert prior.intercept == round(float(tight.intercept_[0]), 4)
    assert prior.slope == pytest.approx(2.0, abs=0.15)
    assert cal.fit_logistic is fit_logistic  # one implementation, re-exported


def test_missing_data_file_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.jsonl"
    assert main(["calibrate", "--data", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"semcache calibrate: cannot read labelled pairs from {missing}: " + (
        "No such file or directory"
    )


@pytest.mark.parametrize("prior", [[], ["--prior"]])
def test_an_out_that_cannot_be_written_is_one_line_before_the_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], prior: list[str]
) -> None:
    """Found from outside: a folder, or a file in a missing folder, as `--out` was a
    traceback, after the whole fit had run."""
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"a": "x", "b": "y", "same_answer": true}\n')
    for out, says in ((tmp_path, "is a directory"), (tmp_path / "no" / "p.json", "does not exist")):
        assert main(["calibrate", *prior, "--data", str(data), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err and "Traceback" not in err


def test_a_data_file_that_is_not_utf8_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_bytes(b"\xff\xfe not text\n")
    assert main(["calibrate", "--data", str(data)]) == 2
    assert "is not UTF-8 text" in capsys.readouterr().err


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"a": "x", "b": "y", "same_answer": true}\n{"a": "x"}\n')
    with pytest.raises(cal.CalibrationError, match=r"pairs\.jsonl:2: expected"):
        cal.read_pairs(data)


def test_guard_scores_with_the_shipped_file() -> None:
    shipped = load_guard_model(SHIPPED_WEIGHTS_PATH)
    guard = NearMissGuard()
    query, cached = "How can I reset my password?", "How do I reset my password?"
    verdict = guard.verify(query, cached, 0.93)
    assert guard.model == shipped
    assert verdict.score == shipped.score(pair_features(query, cached, 0.93).vector())


def test_weights_for_other_features_are_refused(tmp_path: Path) -> None:
    document = json.loads(SHIPPED_WEIGHTS_PATH.read_text())
    document["features"] = document["features"][::-1]
    path = tmp_path / "w.json"
    path.write_text(json.dumps(document))
    with pytest.raises(GuardModelError, match="refit it with `semcache calibrate"):
        load_guard_model(path)


def test_dump_then_load_round_trips(tmp_path: Path) -> None:
    model = GuardModel((1.0,) * 7, -2.0, {"embedder": "e", "date": "2026-01-01"})
    path = tmp_path / "w.json"
    path.write_text(dump_guard_model(model))
    loaded = load_guard_model(path)
    assert loaded == model
    assert loaded.provenance == {"embedder": "e", "date": "2026-01-01", "format": 1}


@pytest.fixture(scope="module")
def qqp_training() -> tuple[list[cal.LabelledPair], np.ndarray, list[bool], str]:
    if not cal.DEFAULT_DATA.is_file():
        pytest.skip(
            f"needs the labelled pairs at {cal.DEFAULT_DATA} (../shared/data beside the clone)"
        )
    from service.embedding.factory import build_embedder

    embedder = build_embedder("torch", None, Path("/nonexistent"), None)
    pairs = cal.read_pairs(cal.DEFAULT_DATA)
    features, labels = cal.guard_training_set(pairs, cal.pair_similarities(embedder, pairs))
    return pairs, features, labels, embedder.model_id


@pytest.mark.slow
def test_shipped_weights_are_what_calibrate_fits(
    qqp_training: tuple[list[cal.LabelledPair], np.ndarray, list[bool], str],
) -> None:
    _, features, labels, model_id = qqp_training
    fit = cal.fit_logistic(features, labels)
    shipped = load_guard_model(SHIPPED_WEIGHTS_PATH)
    assert tuple(round(w, cal.DECIMALS) for w in fit.weights) == shipped.weights
    assert round(fit.bias, cal.DECIMALS) == shipped.bias
    assert shipped.provenance["embedder"] == model_id
    assert shipped.provenance["data"]["sha256"] == cal.file_sha256(cal.DEFAULT_DATA)
    assert shipped.provenance["training"]["pairs"] == len(labels)


@pytest.mark.slow
def test_old_literals_were_scikit_learns_default_lbfgs(
    qqp_training: tuple[list[cal.LabelledPair], np.ndarray, list[bool], str],
) -> None:
    linear_model = pytest.importorskip("sklearn.linear_model")
    _, features, labels, _ = qqp_training
    lbfgs = linear_model.LogisticRegression(C=1.0, solver="lbfgs").fit(features, labels)
    fitted = np.round(np.append(lbfgs.coef_[0], lbfgs.intercept_), 4)
    assert tuple(fitted) == _LITERALS  # bit for bit, after the 4-decimal rounding
    shipped = load_guard_model(SHIPPED_WEIGHTS_PATH)
    assert np.max(np.abs(np.array(_LITERALS) - [*shipped.weights, shipped.bias])) < 3.7e-3
