"""CLI-3: the command line is read the same whether the parser of the named
command alone is built (the fast path of `coop ls`) or all of them."""

import argparse
import contextlib
import io

import pytest

from coop import cli
from coop.client import ClientError

COMMAND_LINES = [
    [], ["ls"], ["ls", "--json"], ["-n", "ls"], ["-n", "ls", "attach"], ["attach", "x", "--pty", "2"],
    ["kill", "-f", "x"], ["kill", "--all"], ["exec", "s", "--", "echo", "-n", "hi"], ["rec", "play", "s", "--speed", "10"],
    ["tunnel", "--no-qr", "--stun", "stun:x"], ["-d", "-w", "/tmp", "--agent", "bash"], ["serve", "-p", "0"],
    ["lss"], ["ls", "--bad"], ["rec"], ["rec", "ls"], ["attach", "--pty", "x"], ["logs", "-n", "many"],
    ["www", "export"], ["-w"], ["--", "ls"], ["ls", "-h"], ["attach", "-h"], ["rec", "play", "-h"], ["-h"],
]


def outcome(read, argv):
    """What reading ``argv`` gives: the options, an error, or printed help."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            return vars(read(argv))
    except ClientError as exc:
        return ("error", str(exc), exc.code)
    except SystemExit as exc:
        return ("exit", exc.code, out.getvalue())


@pytest.mark.parametrize("argv", COMMAND_LINES, ids=lambda argv: " ".join(argv) or "(none)")
def test_the_lone_parser_reads_a_command_line_as_the_full_one(argv):
    assert outcome(cli.parse, argv) == outcome(lambda a: cli.build_parser().parse_args(a), argv)


def test_a_command_line_that_starts_with_a_command_builds_that_parser_alone():
    assert "attach to a session's PTY" in cli.build_parser().format_help()
    lone = cli.build_parser(["ls", "--json"]).format_help()
    assert "list sessions" in lone and "attach to a session's PTY" not in lone


@pytest.mark.parametrize("columns", ["100", "57", "", "nonsense"])
def test_help_is_as_wide_as_argparse_would_make_it(monkeypatch, columns):
    """Without shutil, the width argparse would have found: $COLUMNS, else the terminal's, else 80."""
    monkeypatch.setenv("COLUMNS", columns)
    ours = cli.build_parser().format_help()
    monkeypatch.setattr(cli, "HelpFormatter", argparse.HelpFormatter)
    assert ours == cli.build_parser().format_help()
