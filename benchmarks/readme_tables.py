"""The README's benchmark tables, generated from the checked-in results in docs/bench.

    semcache bench readme [--check]     (or: python -m benchmarks.readme_tables)

Each benchmark run with `--out docs/bench` writes `docs/bench/<name>.json`,
which holds the command line that produced it. In README.md, the region
between `<!-- bench:<name> -->` and `<!-- /bench:<name> -->` is rewritten from
that file: the command, then the tables the command printed. `--check` only
says whether the README is up to date (exit 1 if not).
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.data import REPO_ROOT

RESULTS_DIR = REPO_ROOT / "docs" / "bench"
README = REPO_ROOT / "README.md"
RENDERERS = {
    "latency": "benchmarks.latency:markdown",
    "load": "benchmarks.load_report:markdown",
    "overhead": "benchmarks.overhead:markdown",
    "grouping": "benchmarks.grouping:markdown",
    "compare": "benchmarks.compare:markdown",
    "gptcache": "benchmarks.gptcache_bench:markdown",
    "scale": "benchmarks.scale:markdown",
    "peers": "benchmarks.peers_report:markdown",
    "startup": "benchmarks.startup:markdown",
    "upstream": "benchmarks.upstream_client:markdown",
    "indexing": "benchmarks.indexing:markdown",
    "stream": "benchmarks.stream:markdown",
    "quality": "benchmarks.quality:report_markdown",
    "targets": "benchmarks.targets:markdown",
    "resilience": "benchmarks.resilience:markdown",
    "ab": "benchmarks.ab:markdown",
}
REQUIRED = (
    "latency", "load", "overhead", "grouping", "compare", "gptcache", "scale", "startup",
    "indexing", "upstream", "targets", "resilience", "ab",
)  # fmt: skip
REGION = re.compile(r"(<!-- bench:([a-z_-]+) -->\n)(.*?)(<!-- /bench:\2 -->)", re.DOTALL)


def _renderer(name: str) -> Callable[[dict[str, Any]], str]:
    module, function = RENDERERS[name].split(":")
    renderer: Callable[[dict[str, Any]], str] = getattr(importlib.import_module(module), function)
    return renderer


def render(name: str, results_dir: Path = RESULTS_DIR) -> str:
    """The README block of one benchmark, from `<results_dir>/<name>.json`.

    Raises:
        KeyError: no renderer for `name`.
        FileNotFoundError: the results file is missing.
    """
    report = json.loads((results_dir / f"{name}.json").read_text(encoding="utf-8"))
    code = f" at commit {report['code']}" if report.get("code") else ""
    return f"Produced by `{report['command']}`{code}:\n\n{_renderer(name)(report)}\n"


def regions(readme: str) -> list[str]:
    """The names of the generated regions in `readme`, in order."""
    return [match.group(2) for match in REGION.finditer(readme)]


def regenerate(readme: str, results_dir: Path = RESULTS_DIR) -> str:
    """`readme` with every generated region rewritten from the results files."""
    return REGION.sub(
        lambda m: f"{m.group(1)}{render(m.group(2), results_dir)}{m.group(4)}", readme
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite README.md's generated regions, or with --check only compare them."""
    parser = argparse.ArgumentParser(prog="semcache bench readme", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is stale")
    return run(parser.parse_args(argv).check)


def run(check: bool) -> int:
    """Rewrite (or with `check`, compare) README.md from docs/bench; 0 when it is current."""
    current = README.read_text(encoding="utf-8")
    fresh = regenerate(current)
    if fresh == current:
        print(f"README.md is up to date with {len(regions(current))} results files")
        return 0
    if check:
        print("README.md differs from docs/bench; run `semcache bench readme`", file=sys.stderr)
        return 1
    README.write_text(fresh, encoding="utf-8")
    print(f"rewrote {len(regions(fresh))} benchmark regions of README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
