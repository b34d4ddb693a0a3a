"""`int8_kernels`: the CPU family onnxruntime's int8 kernels (and so int8 vectors) follow."""

from __future__ import annotations

import platform

import pytest

from service.embedding.cpu import cpu_model, int8_kernels

_X86 = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse sse2 {}\n\nprocessor\t: 1\n"


@pytest.mark.parametrize(
    ("flags", "family"),
    [
        ("avx2 fma avx512f avx512bw avx512_vnni amx_tile amx_int8", "amx_int8"),
        ("avx2 fma avx512f avx512bw avx512_vnni", "avx512_vnni"),
        ("avx2 fma avx_vnni", "avx_vnni"),
        ("avx2 fma avx512f avx512bw", "avx512bw"),
        ("avx2 fma", "avx2"),
    ],
)
def test_the_best_int8_instructions_name_the_family(flags: str, family: str) -> None:
    assert int8_kernels(_X86.format(flags)) == family


def test_without_those_instructions_the_machine_names_it() -> None:
    arm = "processor\t: 0\nFeatures\t: fp asimd asimddp\n"
    assert int8_kernels(arm) == platform.machine().lower()
    assert int8_kernels("") == platform.machine().lower()


def test_the_model_name_comes_from_cpuinfo() -> None:
    assert cpu_model(_X86.format("avx2")) == "Some CPU"
    assert cpu_model("") == (platform.processor() or platform.machine() or "unknown")


def test_a_benchmark_report_names_the_cpu_and_its_int8_family() -> None:
    from benchmarks.report import machine_note

    assert f"({cpu_model()}, int8 kernels {int8_kernels()})" in machine_note()
