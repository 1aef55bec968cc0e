"""pbxctl/cli.py: the command table, and a run that imports only its own command's module."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from pbxctl.cli import COMMAND_MODULES, COMMANDS, build_parser, main


def test_the_table_names_exactly_the_commands_each_module_registers() -> None:
    registered: dict[str, str] = {}
    for module in COMMAND_MODULES:
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(f"pbxctl.commands.{module}").register(sub)
        registered.update(dict.fromkeys(sub.choices, module))
    assert registered == COMMANDS


def test_the_full_parser_lists_every_command() -> None:
    help_text = build_parser().format_help()
    for command in COMMANDS:
        assert command in help_text


def test_a_run_imports_only_its_own_command_module() -> None:
    probe = (
        "import sys\n"
        "from pbxctl.cli import main\n"
        "try:\n"
        "    main(['route', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('pbxctl.commands.'))\n"
        "heavy = sorted(m for m in ('asyncpg', 'aiohttp') if m in sys.modules)\n"
        "print(loaded, heavy, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stderr.strip().splitlines()[-1] == "['pbxctl.commands.route'] []"


def test_an_unknown_command_gets_the_usage_of_all(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
