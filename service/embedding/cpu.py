"""Which family of int8 kernels onnxruntime runs on this CPU.

onnxruntime picks its int8 matrix kernels by the instructions the CPU has (AMX,
AVX-512 VNNI, AVX-VNNI, AVX-512BW, AVX2), and the int8 embedder's vectors differ
slightly from one family to the next. Measured with `semcache calibrate --prior` on
qqp_dev (on one guard): an AVX-512 VNNI machine kept 1,930 pairs and fitted intercept
-0.2028, slope 1.2991; an AVX2-only one kept 1,935 and fitted -0.1768, 1.2754. Within one family a
refit is the same bytes. So what was fitted with int8 vectors records the family
(`int8_kernels`), and a check of a fitted file compares bytes only on that family.
"""

from __future__ import annotations

import platform
from pathlib import Path

__all__ = ["cpu_model", "int8_kernels"]

CPUINFO = Path("/proc/cpuinfo")

# Best first: the first flag the CPU has names the kernels onnxruntime runs on it.
_FAMILIES = ("amx_int8", "avx512_vnni", "avx_vnni", "avx512bw", "avx2")


def int8_kernels(cpuinfo: str | None = None) -> str:
    """The int8 kernel family of this CPU: one of `_FAMILIES`, else the machine name.

    Args:
        cpuinfo: the text of /proc/cpuinfo (read from the system when None; where
            there is none, as on macOS, the answer is `platform.machine()`).
    """
    flags = set(_first_field(cpuinfo, ("flags", "Features")).split())
    for family in _FAMILIES:
        if family in flags:
            return family
    return platform.machine().lower() or "unknown"


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name from /proc/cpuinfo (`cpuinfo`: its text, read when None),
    else `platform.processor()` or the machine name."""
    return (
        _first_field(cpuinfo, ("model name",))
        or platform.processor()
        or platform.machine()
        or "unknown"
    )


def _first_field(cpuinfo: str | None, names: tuple[str, ...]) -> str:
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in names:
            return value.strip()
    return ""
