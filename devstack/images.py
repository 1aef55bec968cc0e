"""Container images for compose/, built here: no registry can be pulled from on these machines.

Two local base images, made once and kept in podman's storage (outside any clone):
- ``localhost/pbx-bookworm:12``: Debian 12 from debootstrap (minbase), cached beside the chroot;
- ``localhost/pbx-asterisk:<version>``: the dev stack's Asterisk chroot itself, so a container runs
  the very Asterisk build the tests run.
The project's Dockerfiles start ``FROM`` these and install the rest from Debian's and Python's
registries, which containers on the host network can reach.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from devstack.chroot import MIRROR, asterisk_version, ensure_chroot
from devstack.settings import cache_dir
from pbx_base.errors import StackError

__all__ = [
    "BOOKWORM",
    "COMPOSE_FILE",
    "ImageError",
    "asterisk_base",
    "build_compose_images",
    "compose_command",
    "containers_env",
    "ensure_base_images",
    "main",
    "podman",
]

BOOKWORM = "localhost/pbx-bookworm:12"
COMPOSE_DIR = Path(__file__).resolve().parent.parent / "compose"
CONTAINERS_CONF = COMPOSE_DIR / "containers.conf"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
# The secrets the compose file requires; a build reads none of them.
_BUILD_PLACEHOLDERS = (
    "PBX_DB_ADMIN_PASSWORD",
    "PBX_ASTERISK_DB_PASSWORD",
    "PBX_KAMAILIO_DB_PASSWORD",
    "PBX_ARI_PASSWORD",
    "PBX_AMI_PASSWORD",
)
# The edge's image copies the controller's venv (a stage of compose/controller.Dockerfile): built
# after the others, it takes that stage from the cache instead of building it a second time beside
# the controller (podman-compose builds every service at once).
EDGE_SERVICE = "kamailio"
# The chroot's mount points and per-stack state are the host's business, not the image's.
_NOT_IN_IMAGE = ("./proc/*", "./sys/*", "./dev/*", "./run/*", "./tmp/*", "./stacks", "./var/cache/apt/archives/*.deb")


class ImageError(StackError, RuntimeError):
    """An image cannot be built or inspected; one line naming the cause."""


def containers_env() -> dict[str, str]:
    """The environment every podman call runs in: the project's containers.conf, not the host's."""
    return dict(os.environ, CONTAINERS_CONF=str(CONTAINERS_CONF))


def podman(*args: str, input_bytes: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    if shutil.which("podman") is None:
        raise ImageError("podman is not installed: run devstack/install_container_deps.sh")
    done = subprocess.run(["podman", *args], env=containers_env(), input=input_bytes, capture_output=True, check=False)
    if check and done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise ImageError(f"podman {args[0]} failed (exit {done.returncode}): {tail[0]}")
    return done


def _exists(image: str) -> bool:
    return podman("image", "exists", image, check=False).returncode == 0


def _import_tree(root: Path, image: str, excludes: tuple[str, ...] = ()) -> None:
    argv = ["tar", "-C", str(root), "--numeric-owner", *(f"--exclude={e}" for e in excludes), "-c", "."]
    tar = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert tar.stdout is not None
    done = subprocess.run(
        ["podman", "import", "-q", "-", image], env=containers_env(), stdin=tar.stdout, capture_output=True, check=False
    )
    tar.stdout.close()
    if tar.wait() not in (0, 1) or done.returncode != 0:  # tar: 1 = a file changed while read (logs)
        raise ImageError(f"importing {root} as {image} failed: {done.stderr.decode(errors='replace').strip()[-200:]}")


# Certificate authorities this host trusts beyond Debian's set (a site's TLS-inspecting proxy, for
# one): an image built here must reach the same registries the host reaches.
SITE_CAS = Path("/usr/local/share/ca-certificates")


def _bookworm_tree() -> Path:
    root = cache_dir() / "bookworm-minbase"
    if (root / "etc" / "debian_version").exists():
        _copy_site_cas(root)
        return root
    tmp = root.with_name(root.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    done = subprocess.run(
        ["debootstrap", "--variant=minbase", "bookworm", str(tmp), MIRROR], capture_output=True, check=False
    )
    if done.returncode != 0:
        raise ImageError(f"debootstrap bookworm failed: {done.stderr.decode(errors='replace').strip()[-200:]}")
    tmp.rename(root)
    _copy_site_cas(root)
    return root


def _copy_site_cas(root: Path) -> None:
    """The host's own CAs into the tree, where a Dockerfile's ``ca-certificates`` picks them up."""
    if SITE_CAS.is_dir():
        shutil.copytree(SITE_CAS, root / SITE_CAS.relative_to("/"), dirs_exist_ok=True)


def asterisk_base(chroot: Path) -> str:
    """The name of the Asterisk base image made from ``chroot`` (its Asterisk version as the tag)."""
    return "localhost/pbx-asterisk:" + re.sub(r"[^A-Za-z0-9_.-]", "-", asterisk_version(chroot).split()[-1])


def ensure_base_images(chroot: Path) -> dict[str, str]:
    """Make the base images that are missing; returns the build arguments naming them."""
    if not _exists(BOOKWORM):
        _import_tree(_bookworm_tree(), BOOKWORM)
    asterisk = asterisk_base(chroot)
    if not _exists(asterisk):
        _import_tree(ensure_chroot(chroot), asterisk, _NOT_IN_IMAGE)
    return {"PBX_BOOKWORM_IMAGE": BOOKWORM, "PBX_ASTERISK_IMAGE": asterisk}


def compose_command(project: str) -> list[str]:
    """podman-compose for ``project`` (no pod: the services share the host's network anyway)."""
    return [sys.executable, "-m", "podman_compose", "--in-pod", "false", "-f", str(COMPOSE_FILE), "-p", project]


def build_compose_images(chroot: Path, log: Path) -> dict[str, str]:
    """Every image of compose/docker-compose.yml, up to date (unchanged layers come from podman's
    cache); returns the environment naming the base images, which `up` needs too."""
    images = ensure_base_images(chroot)
    env = dict(containers_env(), **images, **dict.fromkeys(_BUILD_PLACEHOLDERS, "unused-at-build"))
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    with open(log, "w") as out:
        for batch in ([s for s in services if s != EDGE_SERVICE], [EDGE_SERVICE]):
            argv = [*compose_command("pbx-build"), "build", *batch]
            done = subprocess.run(argv, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
            if done.returncode != 0:
                break
    if done.returncode != 0:
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        raise ImageError(f"building the compose images failed (exit {done.returncode}): {tail} (log: {log})")
    return images


def main(argv: list[str] | None = None) -> None:
    """``python -m devstack.images [--build]``: the base images made if missing, and their names as
    ``export`` lines for a shell (``eval "$(python -m devstack.images)"``); with ``--build``, every
    compose image built too, the edge's after the controller's."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m devstack.images", description=main.__doc__)
    parser.add_argument("--build", action="store_true", help="build every image of compose/docker-compose.yml")
    args = parser.parse_args(argv)
    chroot = cache_dir() / "chroot-sid"
    try:
        if args.build:
            log = Path(tempfile.mkdtemp(prefix="pbx-compose-build-")) / "build.log"
            print(f"building the compose images (log: {log})", file=sys.stderr)
            images = build_compose_images(chroot, log)
        else:
            images = ensure_base_images(chroot)
    except StackError as exc:
        sys.exit(f"devstack.images: {exc}")
    for name, value in images.items():
        print(f"export {name}={value}")


if __name__ == "__main__":
    main()
