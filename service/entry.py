"""The `semcache` console script.

Importing the CLI (pydantic, structlog, the settings and what they name) takes
most of a second; Ctrl-C in that time would print a traceback, where once the
CLI runs it is one line (`service.cli.main`). This module imports nothing
else first, so that window says "interrupted" too.
"""

from __future__ import annotations

import sys

INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it


def main() -> int:
    """Load the CLI and run it; Ctrl-C while it loads is one line and status 130."""
    try:
        from service.cli import main as cli_main
    except KeyboardInterrupt:
        print("semcache: interrupted", file=sys.stderr)
        return INTERRUPTED
    return cli_main()
