"""devstack/odbc.py: a node's realtime families moved to res_config_odbc and a res_odbc pool; and
devstack/chroot.py: a cached chroot gains the ODBC packages in place."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devstack import chroot
from devstack.odbc import CLASS, REALTIME_FAMILIES, odbc_files, render_odbc, route_families, with_odbc_modules
from devstack.settings import StackSettings
from pbx_base import resources

SHIPPED = resources.asterisk_conf_dir()


def _settings() -> StackSettings:
    return StackSettings(
        name="t", pg_port=5999, sip_port=5060, http_port=8088, ami_port=5038, rtp_start=10000, rtp_end=10100,
        db_password="dbpw", ari_password="a", ami_password="m",
    )  # fmt: skip


def test_files_name_the_pool_size_the_dsn_and_the_database() -> None:
    files = odbc_files(_settings(), "@pbx-pg-5999", 8)
    assert "max_connections => 8" in files["res_odbc.conf"]
    assert f"dsn => {CLASS}" in files["res_odbc.conf"]
    assert "password => dbpw" in files["res_odbc.conf"]
    assert "Servername = @pbx-pg-5999\nPort = 5999\n" in files["odbc.ini"]
    assert "Driver = psqlodbc\n" in files["odbc.ini"]
    assert files["odbcinst.ini"].startswith("[psqlodbc]\nDriver = /usr/lib/")


def test_simple_queries_turn_server_side_prepare_off() -> None:
    assert "UseServerSidePrepare = 0\n" in odbc_files(_settings(), "127.0.0.1", 4, server_prepare=False)["odbc.ini"]
    assert "UseServerSidePrepare = 1\n" in odbc_files(_settings(), "127.0.0.1", 4)["odbc.ini"]


def test_a_pool_of_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="max_connections 0: must be at least 1"):
        odbc_files(_settings(), "127.0.0.1", 0)


def test_only_the_named_families_leave_pgsql() -> None:
    shipped = (SHIPPED / "extconfig.conf").read_text()
    out = route_families(shipped, ("ps_endpoints", "ps_auths"))
    assert f"ps_endpoints => odbc,{CLASS}\n" in out and f"ps_auths => odbc,{CLASS}\n" in out
    assert "ps_contacts => pgsql,general,ps_node_contacts\n" in out
    assert f"ps_contacts => odbc,{CLASS},ps_node_contacts\n" in route_families(shipped, ("ps_contacts",))
    every = route_families(shipped, REALTIME_FAMILIES)
    assert "pgsql" not in every


def test_an_unknown_or_unmapped_family_is_refused() -> None:
    shipped = (SHIPPED / "extconfig.conf").read_text()
    with pytest.raises(ValueError, match="realtime family ps_bogus: not one of"):
        route_families(shipped, ("ps_bogus",))
    with pytest.raises(ValueError, match="no pgsql mapping of ps_aors"):
        route_families(route_families(shipped, ("ps_aors",)), ("ps_aors",))


def test_modules_load_the_pool_and_its_dependency_once() -> None:
    shipped = (SHIPPED / "modules.conf").read_text()
    out = with_odbc_modules(shipped)
    lines = out.splitlines()
    assert lines.index("load => res_odbc_transaction.so") < lines.index("load => res_odbc.so")
    assert lines.index("load => res_odbc.so") < lines.index("load => res_config_odbc.so")
    assert with_odbc_modules(out) == out
    with pytest.raises(ValueError, match="no res_config_pgsql load line"):
        with_odbc_modules("[modules]\n")


def test_render_rewrites_a_rendered_etc_dir(tmp_path: Path) -> None:
    for name in ("extconfig.conf", "modules.conf"):
        (tmp_path / name).write_text((SHIPPED / name).read_text())
    render_odbc(tmp_path, _settings(), "127.0.0.1", ("ps_contacts",), 4)
    assert {p.name for p in tmp_path.iterdir()} >= {"odbc.ini", "odbcinst.ini", "res_odbc.conf"}
    assert f"ps_contacts => odbc,{CLASS}" in (tmp_path / "extconfig.conf").read_text()
    assert "load => res_config_odbc.so" in (tmp_path / "modules.conf").read_text()


def _built(root: Path, stamp: str | None) -> Path:
    (root / "usr" / "sbin").mkdir(parents=True)
    (root / "usr" / "sbin" / "asterisk").write_text("")
    if stamp is not None:
        (root / chroot.EXTRAS_STAMP).parent.mkdir(parents=True)
        (root / chroot.EXTRAS_STAMP).write_text(stamp)
    return root


def test_a_chroot_with_the_current_extras_is_used_as_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _built(tmp_path / "sid", " ".join(chroot.EXTRA_PACKAGES) + "\n")
    monkeypatch.setattr(chroot, "_add_extras", lambda *a: pytest.fail("nothing to add"))
    assert chroot.ensure_chroot(root) == root


def test_a_chroot_built_before_the_extras_gains_them_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _built(tmp_path / "sid", None)
    added: list[Path] = []

    def add(r: Path, log: Path) -> None:
        added.append(r)
        (r / chroot.EXTRAS_STAMP).parent.mkdir(parents=True, exist_ok=True)
        (r / chroot.EXTRAS_STAMP).write_text(" ".join(chroot.EXTRA_PACKAGES) + "\n")

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(chroot, "_add_extras", add)
    assert chroot.ensure_chroot(root) == root
    assert added == [root]
    assert (root / "usr" / "sbin" / "asterisk").exists()  # the same tree, not a new one
    assert chroot.ensure_chroot(root) == root and added == [root]  # stamped: once


def test_without_root_a_chroot_lacking_the_extras_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _built(tmp_path / "sid", "odbc-postgresql\n")  # an older list of extras
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(chroot.ChrootError, match=r"^adding odbc-postgresql unixodbc to the Asterisk chroot needs root"):
        chroot.ensure_chroot(root)
