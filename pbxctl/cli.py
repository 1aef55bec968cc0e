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

COMMAND_MODULES = (
    "db",
    "config",
    "route",
    "dev",
    "call",
    "serve",
    "nodes",
    "push",
    "audit",
    "objects",
    "token",
    "trunks",
    "calls",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pbxctl", description="Multi-tenant Asterisk control plane")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"pbxctl.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"pbxctl.commands.{name}":
                continue  # a command group not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
