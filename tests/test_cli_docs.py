"""Every `semcache` command, and every option it takes, is in the README.

The README's command table has a row per command: its usage, then what it does
(which may name an option, as an old name of another); the client commands'
shared options are in the paragraph after it.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

from service.cli import build_parser

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
ROW = re.compile(r"^\| `(semcache [^`]*)` \|.*$", re.MULTILINE)
CLIENT_COMMANDS = ("complete", "stats", "invalidate", "import", "feedback")


def _commands(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], list[str]]]:
    """(the command's words, its long options) for every command that runs something."""
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in subcommands:
        for name, sub in action.choices.items():
            yield from _commands(sub, (*words, name))
    if words and not subcommands:
        options = [
            option
            for action in parser._actions
            for option in action.option_strings
            if option.startswith("--") and option != "--help"
        ]
        yield words, options


def _row_of(words: tuple[str, ...]) -> str | None:
    """The README's table row for the command (usage, then what it does), or None."""
    command = "semcache " + " ".join(words)
    for row in ROW.finditer(README):
        usage = row.group(1)
        if usage == command or usage.startswith(command + " "):
            return row.group(0)
    return None


def _client_options_paragraph() -> str:
    start = README.index("The client commands (`complete`")
    return README[start : README.index("\n\n", start)]


def test_the_walk_sees_nested_commands_and_their_options() -> None:
    commands = dict(_commands(build_parser()))
    assert "--runs" in commands[("bench", "targets")]
    assert "--role" in commands[("keys", "add")]


def test_every_command_has_a_row_naming_every_option_it_takes() -> None:
    shared = _client_options_paragraph()
    missing: dict[str, list[str]] = {}
    for words, options in _commands(build_parser()):
        usage = _row_of(words)
        if usage is None:
            missing[" ".join(words)] = ["(no row)"]
            continue
        elsewhere = shared if words[0] in CLIENT_COMMANDS else ""
        absent = [o for o in options if not re.search(rf"{o}(?![\w-])", usage + elsewhere)]
        if absent:
            missing[" ".join(words)] = absent
    assert not missing, f"add to the README's command table: {missing}"
