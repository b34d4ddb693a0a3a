"""Where the benchmarks find their data: one setting, and one clear line when it is missing.

The folder is `SEMCACHE_BENCH_DATA_DIR` when set, else `shared/data` beside the
repository's own folder (`<repo>/../shared/data`), wherever the command is run
from. A command's `--data FILE` names the qqp-style file itself and wins over
both. Files are read in place, never copied.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
QQP_FILE = "qqp_dev.jsonl"


class MissingDataError(SystemExit):
    """A data file a benchmark needs is not there.

    A `SystemExit` whose message is one line: the command prints it and exits
    with status 1, no traceback.
    """


def data_dir() -> Path:
    """The benchmark data folder: `SEMCACHE_BENCH_DATA_DIR`, else `<repo>/../shared/data`."""
    from service.config import Settings

    configured = Settings().bench_data_dir
    return configured if configured is not None else DEFAULT_DATA_DIR


def data_file(explicit: Path | None = None, name: str = QQP_FILE, flag: str = "--data") -> Path:
    """`explicit` if given (by the option `flag`), else `name` in `data_dir()`; checked to exist.

    Raises:
        MissingDataError: the file is not there (the message says how to point at it).
    """
    path = explicit if explicit is not None else data_dir() / name
    if not path.is_file():
        source = flag if explicit is not None else _dir_source()
        raise MissingDataError(
            f"semcache bench: data file {path} not found (from {source}); pass {flag} FILE or"
            f" set SEMCACHE_BENCH_DATA_DIR to the folder holding {name}"
        )
    return path


def _dir_source() -> str:
    from service.config import Settings

    if Settings().bench_data_dir is not None:
        return "SEMCACHE_BENCH_DATA_DIR"
    return "the default <repo>/../shared/data; SEMCACHE_BENCH_DATA_DIR is unset"
