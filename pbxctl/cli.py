"""Entry point of ``pbxctl``.

Each command group lives in its own module under ``pbxctl.commands`` and exposes
``register(subparsers)``; a registered sub-command sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from pbx_base.errors import PbxError
from pbxctl.errors import EXIT_USAGE, exit_code_for

__all__ = ["build_parser", "main"]

# Which module registers each command. A run imports only its command's module: importing them all
# (asyncpg, aiohttp, pydantic-settings, ...) cost every `pbxctl route simulate` more than the
# simulation itself, and the scenario checker starts pbxctl once per scenario. The help lists all.
COMMANDS = {
    "db": "db",
    "apply": "config",
    "plan": "config",
    "export": "config",
    "route": "route",
    "dev": "dev",
    "call": "call",
    "serve": "serve",
    "nodes": "nodes",
    "push": "push",
    "audit": "audit",
    "tenant": "objects",
    "template": "objects",
    "endpoint": "objects",
    "extension": "objects",
    "token": "token",
    "trunks": "trunks",
    "calls": "calls",
}
COMMAND_MODULES = tuple(dict.fromkeys(COMMANDS.values()))


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or only of the module that registers ``command``."""
    parser = argparse.ArgumentParser(prog="pbxctl", description="Multi-tenant Asterisk control plane")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in (COMMANDS[command],) if command in COMMANDS else COMMAND_MODULES:
        importlib.import_module(f"pbxctl.commands.{name}").register(subparsers)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The command word of ``argv``: its first argument (pbxctl itself takes no options but -h)."""
    return argv[0] if argv and not argv[0].startswith("-") else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_usage(sys.stderr)
        return EXIT_USAGE
    try:
        return int(func(args))
    except PbxError as exc:
        # Commands translate what they expect into a CliError with its message; any other error of
        # ours still ends as one line, with its group's code.
        print(f"pbxctl: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`pbxctl ... | head`): not an error of ours. Point stdout at
        # /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
