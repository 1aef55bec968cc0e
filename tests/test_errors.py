"""The project's exception groups (pbx_base.errors) and the CLI's exit code for each."""

from __future__ import annotations

import argparse

import pytest

from ari_app.ari import AriConflict, AriError, AriNotFound, AriStatusError, AriUnavailable
from devstack.asterisk import AsteriskError
from devstack.chroot import ChrootError
from devstack.play import PlayError
from devstack.postgres import PostgresError
from devstack.services import ServicesError
from pbx_base.errors import (
    DependencyError,
    InvalidInput,
    NotConfigured,
    NotFound,
    PbxError,
    StackError,
    Unavailable,
    UnknownTenant,
)
from pbxctl import cli
from pbxctl.errors import CliError, Invalid, Unreachable, exit_code_for
from sorcery_backend import export
from sorcery_backend.ami import AmiDisconnected, AmiError, AmiUnreachable
from sorcery_backend.db import DatabaseUnavailable, MissingDsn
from sorcery_backend.declarative import ConfigError
from sorcery_backend.nodes import NodeRefused

GROUPS: list[tuple[type[Exception], type[PbxError], tuple[type[Exception], ...]]] = [
    (ConfigError, InvalidInput, (ValueError,)),
    (NodeRefused, InvalidInput, (ValueError,)),
    (PlayError, InvalidInput, ()),
    (Invalid, InvalidInput, ()),
    (UnknownTenant, NotFound, (LookupError,)),
    (MissingDsn, NotConfigured, (ValueError,)),
    (DatabaseUnavailable, Unavailable, (ConnectionError,)),
    (AmiUnreachable, Unavailable, (ConnectionError,)),
    (AmiDisconnected, Unavailable, (ConnectionError,)),
    (AriUnavailable, Unavailable, ()),
    (Unreachable, Unavailable, ()),
    (AmiError, DependencyError, (RuntimeError,)),
    (AriNotFound, DependencyError, ()),
    (AriConflict, DependencyError, ()),
    (PostgresError, StackError, (RuntimeError,)),
    (ChrootError, StackError, (RuntimeError,)),
    (AsteriskError, StackError, (RuntimeError,)),
    (ServicesError, StackError, (RuntimeError,)),
]


@pytest.mark.parametrize(("cls", "group", "builtins"), GROUPS, ids=[c.__name__ for c, _, _ in GROUPS])
def test_every_exception_is_in_its_group_and_keeps_its_builtin_base(
    cls: type[Exception], group: type[PbxError], builtins: tuple[type[Exception], ...]
) -> None:
    assert issubclass(cls, group) and issubclass(cls, PbxError)
    for base in builtins:
        assert issubclass(cls, base)


def test_one_unknown_tenant_and_ari_failures_share_one_base() -> None:
    assert export.UnknownTenant is UnknownTenant
    # A timed-out request is caught where a refusal is: the controller's leg handling relies on it.
    assert all(issubclass(c, AriError) for c in (AriUnavailable, AriStatusError, AriNotFound, AriConflict))
    assert str(AriUnavailable("POST /channels: no answer in 10 s")) == "POST /channels: no answer in 10 s"


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (Invalid("tenant t: unknown tenant"), 1),
        (CliError("db reset drops every table: pass --yes to confirm", 2), 2),
        (Unreachable("cannot reach the database"), 3),
        (ConfigError("tenant t: bad"), 1),
        (UnknownTenant("t"), 1),
        (MissingDsn("no DSN"), 2),
        (DatabaseUnavailable("down"), 3),
        (AriUnavailable("down"), 3),
        (AmiError("Reload", "Permission denied"), 3),
        (ChrootError("no chroot"), 3),
    ],
)
def test_exit_code_by_group(exc: PbxError, code: int) -> None:
    assert exit_code_for(exc) == code


def test_the_cli_reports_any_error_of_ours_in_one_line_with_its_groups_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def command(args: argparse.Namespace) -> int:
        raise DatabaseUnavailable("database at 127.0.0.1:1: connection refused")

    parser = argparse.ArgumentParser(prog="pbxctl")
    parser.set_defaults(func=command)
    monkeypatch.setattr(cli, "build_parser", lambda command=None: parser)
    assert cli.main([]) == 3
    assert capsys.readouterr().err == "pbxctl: database at 127.0.0.1:1: connection refused\n"
