"""The cold-start prior's file: `semcache calibrate --prior` writes it, `load_prior` reads it.

The fast tests use a made-up embedder; the slow one embeds qqp_dev with the default
onnx-int8 embedder (exported afresh) and checks the shipped `prior.json` is, byte for
byte, what the command writes on the CPU family it was fitted on (and close elsewhere).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.cache import calibrate as cal
from service.cache.guard_model import SHIPPED_WEIGHTS_PATH, load_guard_model
from service.cache.verify.prior import (
    DEFAULT_PRIOR,
    SHIPPED_PRIOR_PATH,
    Prior,
    PriorError,
    dump_prior,
    load_prior,
)
from service.cli import main
from service.config import Settings
from service.startup import startup_error_for

# (cached, query, same answer, cosine): clearly separated cosines, no rule fires.
_PAIRS = (
    [
        (f"how do i fix my {thing} quickly", f"how can i fix my {thing} fast", True, 0.97)
        for thing in ("bike", "sink", "door", "fence", "roof", "lamp")
    ]
    + [
        (f"why does my {thing} make noise", f"how do i paint my {thing}", False, 0.8)
        for thing in ("car", "fan", "fridge", "boiler")
    ]
    + [("how do i clean my oven", "how can i clean my oven fast", False, 0.96)]
)


class _MadeUpEmbedder:
    """Gives each pair exactly its listed cosine (two unit vectors in a plane)."""

    model_id = "made-up/test"
    dim = 2

    def __init__(self, pairs: Sequence[tuple[str, str, bool, float]]) -> None:
        self._vectors = {}
        for cached, query, _, cosine in pairs:
            self._vectors[cached] = np.array([1.0, 0.0], dtype=np.float32)
            self._vectors[query] = np.array([cosine, (1 - cosine**2) ** 0.5], dtype=np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self._vectors[text] for text in texts])


def _write_pairs(path: Path, pairs: Sequence[tuple[str, str, bool, float]]) -> Path:
    lines = [json.dumps({"a": a, "b": b, "same_answer": same}) for a, b, same, _ in pairs]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_shipped_prior_is_the_default_and_names_how_it_was_fitted() -> None:
    document = json.loads(SHIPPED_PRIOR_PATH.read_text(encoding="utf-8"))
    assert load_prior(None) == DEFAULT_PRIOR == Prior(document["intercept"], document["slope"])
    assert document["command"] == "semcache calibrate --prior"
    assert document["embedder"] == "all-MiniLM-L6-v2/onnx-int8"
    assert [source["file"] for source in document["fitted_on"]] == ["qqp_dev.jsonl"]


def test_shipped_prior_was_fitted_on_the_shipped_guard_scores() -> None:
    """A refit of the guard's weights changes its scores: refit the prior with it."""
    guard = load_guard_model(SHIPPED_WEIGHTS_PATH)
    recorded = json.loads(SHIPPED_PRIOR_PATH.read_text(encoding="utf-8"))["guard"]
    assert (tuple(recorded["weights"]), recorded["bias"]) == (guard.weights, guard.bias)


def test_prior_command_fits_qqp_style_data_plus_the_operators_pairs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _write_pairs(tmp_path / "dev.jsonl", _PAIRS[:6] + _PAIRS[6:8])
    mine = _write_pairs(tmp_path / "mine.jsonl", _PAIRS[8:])
    embedder = _MadeUpEmbedder(_PAIRS)
    monkeypatch.setattr("service.embedding.factory.build_embedder", lambda *_: embedder)
    out = tmp_path / "prior.json"
    args = ["calibrate", "--prior", "--data", str(data), "--pairs", str(mine), "--out", str(out)]
    assert main(args) == 0
    document = json.loads(out.read_text(encoding="utf-8"))
    assert [(s["file"], s["pairs"]) for s in document["fitted_on"]] == [
        ("dev.jsonl", 8),
        ("mine.jsonl", 3),
    ]
    assert document["pairs"] == 11 and document["same_answer"] == 6
    assert document["embedder"] == "made-up/test"
    assert document["command"] == f"semcache calibrate --prior --data {data} --pairs {mine}"
    prior = load_prior(out)
    assert prior.slope > 0
    assert prior.p_same(0.99) > prior.p_same(0.5)
    assert main(args) == 0  # the same data: the same bytes
    assert out.read_text(encoding="utf-8") == dump_prior(prior, document | {"format": 1})


def test_a_prior_fitted_with_int8_vectors_names_the_cpu_family(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _write_pairs(tmp_path / "dev.jsonl", _PAIRS)
    embedder = _MadeUpEmbedder(_PAIRS)
    sources = [(data, cal.read_pairs(data))]
    assert "int8_kernels" not in cal.calibrate_prior(sources, embedder, "c")[1]
    embedder.int8_kernels = "avx2"  # type: ignore[attr-defined]
    assert cal.calibrate_prior(sources, embedder, "c")[1]["int8_kernels"] == "avx2"


def test_pairs_without_prior_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", "--pairs", "x.jsonl"]) == 2
    assert capsys.readouterr().err.strip() == (
        "semcache calibrate: --pairs adds pairs to the prior's fit: add --prior"
    )


def test_missing_pairs_file_is_one_line_before_the_embedder_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _write_pairs(tmp_path / "dev.jsonl", _PAIRS)
    missing = tmp_path / "mine.jsonl"

    def no_model(*_: object) -> None:
        raise AssertionError("the embedder loaded before the pairs were read")

    monkeypatch.setattr("service.embedding.factory.build_embedder", no_model)
    assert main(["calibrate", "--prior", "--data", str(data), "--pairs", str(missing)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"semcache calibrate: cannot read labelled pairs from {missing}: No such file or directory"
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (None, "No such file or directory"),
        ("{not json", "not a prior file (Expecting property name"),
        ('{"intercept": 0.1}', "not a prior file (missing 'slope')"),
        ('{"intercept": 0.1, "slope": -1.0}', "the slope must be a positive number"),
        ('{"intercept": "NaN", "slope": 1.0}', "the slope must be a positive number"),
    ],
)
def test_a_bad_prior_file_says_which_file_and_what_to_do(
    tmp_path: Path, text: str | None, problem: str
) -> None:
    path = tmp_path / "prior.json"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(PriorError) as raised:
        load_prior(path)
    message = str(raised.value)
    assert message.startswith(f"cannot read the calibrated prior from {path}: {problem}")
    assert message.endswith(
        f"write it with `semcache calibrate --prior --out {path}`, or unset"
        " SEMCACHE_PRIOR_PATH to use the shipped prior"
    )
    startup = startup_error_for(raised.value, Settings(prior_path=path))
    assert startup is not None and str(startup) == message  # one line, as is


# The shipped prior is fitted on one CPU family, and int8 vectors differ slightly
# between families (`service.embedding.cpu`). Measured on qqp_dev, AVX-512 VNNI against
# AVX2: kept pairs 1,930 against 1,935 (0.26%), P(same answer) at most 0.0080 apart (at
# guard score 0.35). On another family a refit must agree within these bounds, 2.5x and
# 4x what was measured, since the other families were not measured.
CROSS_FAMILY_P_SAME = 0.02
CROSS_FAMILY_PAIRS = 0.01
_FITTED_NUMBERS = ("intercept", "slope", "pairs", "same_answer", "int8_kernels")
# `semcache calibrate --prior` on each family measured: the shipped file is one of them.
_MEASURED_FITS = {
    # Refitted 2026-12-02: the guard's rule changes of 2026-12-01/02 moved some kept
    # pairs' scores (not which pairs are kept); the AVX2 fit is from before them.
    "avx512_vnni": {"intercept": -0.2097, "slope": 1.3091, "pairs": 1930, "same_answer": 1499},
    "avx2": {"intercept": -0.1768, "slope": 1.2754, "pairs": 1935, "same_answer": 1503},
}


def cross_family_differences(shipped: dict[str, Any], refit: dict[str, Any]) -> list[str]:
    """What keeps a refit on another CPU family from agreeing with the shipped file."""
    problems = [
        f"{key}: {shipped.get(key)!r} != {refit.get(key)!r}"
        for key in sorted(set(shipped) | set(refit))
        if key not in _FITTED_NUMBERS and shipped.get(key) != refit.get(key)
    ]
    for key in ("pairs", "same_answer"):
        if abs(refit[key] - shipped[key]) > CROSS_FAMILY_PAIRS * shipped[key]:
            problems.append(f"{key}: {refit[key]} is not within 1% of {shipped[key]}")
    scores = np.linspace(0.001, 0.999, 999)
    logits = np.log(scores / (1 - scores))

    def curve(document: dict[str, Any]) -> np.ndarray:
        return 1 / (1 + np.exp(-(document["intercept"] + document["slope"] * logits)))

    gap = float(np.max(np.abs(curve(shipped) - curve(refit))))
    if gap > CROSS_FAMILY_P_SAME:
        problems.append(f"P(same answer) differs by up to {gap:.4f}")
    return problems


def test_the_measured_cpu_families_agree_within_the_bounds() -> None:
    shipped = json.loads(SHIPPED_PRIOR_PATH.read_text(encoding="utf-8"))
    family = shipped["int8_kernels"]
    assert {key: shipped[key] for key in _MEASURED_FITS[family]} == _MEASURED_FITS[family]
    for other, fit in _MEASURED_FITS.items():
        refit = shipped | fit | {"int8_kernels": other}
        assert cross_family_differences(shipped, refit) == [], other


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"slope": 1.6}, "P(same answer) differs by up to 0.0"),
        ({"intercept": 0.0}, "P(same answer) differs by up to 0.0"),
        ({"pairs": 1900}, "pairs: 1900 is not within 1% of 1930"),
        ({"embedder": "other/onnx-int8"}, "embedder: "),
        ({"fitted_on": []}, "fitted_on: "),
    ],
)
def test_a_refit_on_another_cpu_family_is_checked_not_waved_through(
    change: dict[str, Any], problem: str
) -> None:
    shipped = json.loads(SHIPPED_PRIOR_PATH.read_text(encoding="utf-8"))
    shipped |= {"pairs": 1930}
    refit = shipped | {"int8_kernels": "elsewhere"} | change
    problems = cross_family_differences(shipped, refit)
    assert len(problems) == 1 and problems[0].startswith(problem), problems


@pytest.mark.slow
def test_shipped_prior_is_what_calibrate_prior_fits(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Byte for byte on the CPU family it was fitted on; within the bounds elsewhere."""
    if not cal.DEFAULT_DATA.is_file():
        pytest.skip(
            f"needs the labelled pairs at {cal.DEFAULT_DATA} (../shared/data beside the clone)"
        )
    from service.embedding.factory import build_embedder

    embedder = build_embedder("onnx-int8", None, tmp_path_factory.mktemp("onnx"), 1)
    shipped = SHIPPED_PRIOR_PATH.read_text(encoding="utf-8")
    sources = [(cal.DEFAULT_DATA, cal.read_pairs(cal.DEFAULT_DATA))]
    prior, provenance = cal.calibrate_prior(sources, embedder, "semcache calibrate --prior")
    refit = dump_prior(prior, provenance)
    if provenance["int8_kernels"] == json.loads(shipped)["int8_kernels"]:
        assert refit == shipped  # bit for bit, provenance and all
    else:
        assert cross_family_differences(json.loads(shipped), json.loads(refit)) == []
