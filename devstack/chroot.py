"""The Debian sid chroot that carries Asterisk 22: built once with debootstrap, cached, shared.

Built into a temporary sibling directory and renamed into place only when complete, so a half
built chroot is never mistaken for a good one. /proc and /dev are mounted while any stack runs.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pbx_base.errors import StackError

__all__ = ["ChrootError", "asterisk_version", "ensure_chroot", "mount", "mounted", "umount"]

MIRROR = "http://deb.debian.org/debian"
PACKAGES = ["asterisk", "asterisk-modules", "asterisk-config"]
# Added after the first release of the chroot: a cached chroot gains them in place (recorded by
# EXTRAS_STAMP) instead of a rebuild. psqlODBC and the unixODBC tools: res_odbc's connection pool
# as an alternative to res_config_pgsql's one serialized connection (bench/register.py --odbc).
EXTRA_PACKAGES = ["odbc-postgresql", "unixodbc"]
EXTRAS_STAMP = Path("var/lib/pbx-chroot/extra-packages")
_APT_ENV = ["env", "DEBIAN_FRONTEND=noninteractive"]


class ChrootError(StackError, RuntimeError):
    """The chroot cannot be built or used; one line naming the cause."""


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(argv: list[str], what: str, log: Path) -> None:
    with open(log, "a") as out:
        r = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False)
    if r.returncode != 0:
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        raise ChrootError(f"{what} failed (exit {r.returncode}): {tail} (full log: {log})")


def _extras_line() -> str:
    return " ".join(EXTRA_PACKAGES) + "\n"


def _complete(root: Path) -> bool:
    stamp = root / EXTRAS_STAMP
    return (root / "usr" / "sbin" / "asterisk").exists() and stamp.exists() and stamp.read_text() == _extras_line()


def _apt_install(root: Path, packages: list[str], what: str, log: Path) -> None:
    _run(
        ["chroot", str(root), *_APT_ENV, "apt-get", "-o", "Acquire::Check-Valid-Until=false", "update"],
        "apt-get update in the chroot",
        log,
    )
    _run(["chroot", str(root), *_APT_ENV, "apt-get", "install", "-y", "--no-install-recommends", *packages], what, log)
    (root / EXTRAS_STAMP).parent.mkdir(parents=True, exist_ok=True)
    (root / EXTRAS_STAMP).write_text(_extras_line())


def _add_extras(root: Path, log: Path) -> None:
    """Install EXTRA_PACKAGES into a built chroot that predates them; running stacks keep theirs."""
    was_mounted = mounted(root)
    mount(root)
    try:
        _apt_install(root, EXTRA_PACKAGES, "installing " + " ".join(EXTRA_PACKAGES) + " into the chroot", log)
    finally:
        if not was_mounted:
            umount(root)


def ensure_chroot(root: Path) -> Path:
    """Return the ready chroot at ``root``, building it first when missing, or adding the
    packages it lacks when it was built before they were added."""
    if _complete(root):
        return root
    if os.geteuid() != 0:
        if (root / "usr" / "sbin" / "asterisk").exists():
            raise ChrootError(f"adding {' '.join(EXTRA_PACKAGES)} to the Asterisk chroot needs root (chroot, apt-get)")
        raise ChrootError("building the Asterisk chroot needs root (debootstrap, chroot, mount)")
    with _lock(root.parent / f".{root.name}.lock"):
        if _complete(root):
            return root  # another process built it while we waited
        log = root.parent / f"{root.name}.build.log"
        if (root / "usr" / "sbin" / "asterisk").exists():
            with open(log, "a") as fh:
                fh.write(f"--- adding {' '.join(EXTRA_PACKAGES)}\n")
            _add_extras(root, log)
            return root
        if shutil.which("debootstrap") is None:
            raise ChrootError("debootstrap is not installed: apt-get install debootstrap")
        tmp = root.parent / f"{root.name}.building"
        if tmp.exists():
            umount(tmp)
            shutil.rmtree(tmp)
        log.write_text("")
        _run(["debootstrap", "--variant=minbase", "sid", str(tmp), MIRROR], "debootstrap of Debian sid", log)
        shutil.copy("/etc/resolv.conf", tmp / "etc" / "resolv.conf")
        mount(tmp)
        try:
            what = "installing Asterisk from Debian sid (the archive may not serve it now)"
            _apt_install(tmp, [*PACKAGES, *EXTRA_PACKAGES], what, log)
        finally:
            umount(tmp)
        if not (tmp / "usr" / "sbin" / "asterisk").exists():
            raise ChrootError(f"Asterisk is missing from the chroot after the install (log: {log})")
        tmp.rename(root)
    return root


def _mountpoints() -> set[str]:
    with open("/proc/mounts") as fh:
        return {line.split()[1] for line in fh}


def mounted(root: Path) -> bool:
    return str(root / "proc") in _mountpoints()


# Asterisk looks up its own address for every RTCP session it sets up while RTP is bound to the
# any-address (main/acl.c ast_find_ourip): the host name, then A.ROOT-SERVERS.NET. Here the name
# server is unreachable and such a lookup sometimes hangs for 5 s, stalling a call's setup. The
# chroot's hosts file answers both at once; a node with working DNS does not need this.
_HOSTS = """127.0.0.1 localhost
127.0.0.1 A.ROOT-SERVERS.NET
"""


def mount(root: Path) -> None:
    hosts = root / "etc" / "hosts"
    if not hosts.exists() or hosts.read_text() != _HOSTS + f"127.0.0.1 {socket.gethostname()}\n":
        hosts.write_text(_HOSTS + f"127.0.0.1 {socket.gethostname()}\n")
    points = _mountpoints()
    if str(root / "proc") not in points:
        subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    if str(root / "dev") not in points:
        subprocess.run(["mount", "--bind", "/dev", str(root / "dev")], check=True)


def umount(root: Path) -> None:
    points = _mountpoints()
    for sub in ("dev", "proc"):
        if str(root / sub) in points:
            subprocess.run(["umount", "-l", str(root / sub)], check=False)


def asterisk_version(root: Path) -> str:
    r = subprocess.run(["chroot", str(root), "/usr/sbin/asterisk", "-V"], capture_output=True, text=True, check=False)
    return r.stdout.strip() or r.stderr.strip()
