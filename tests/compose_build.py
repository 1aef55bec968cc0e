"""The compose images, built in the background from the moment the session knows it will need
them: building takes minutes on a cold machine (mostly downloads), which the rest of the suite
overlaps. The compose tests run last and wait for it."""

from __future__ import annotations

import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from devstack.images import build_compose_images
from devstack.settings import cache_dir

MODULE = "test_compose_stack.py"
_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compose-build")
_build: Future[dict[str, str]] | None = None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    ours = [i for i in items if i.path.name == MODULE]
    items[:] = [i for i in items if i.path.name != MODULE] + ours


def pytest_collection_finish(session: pytest.Session) -> None:
    global _build
    if any(i.path.name == MODULE for i in session.items):
        log = Path(tempfile.mkdtemp(prefix="pbx-compose-build-")) / "build.log"
        _build = _pool.submit(build_compose_images, cache_dir() / "chroot-sid", log)


def built_images(timeout: float) -> dict[str, str]:
    """The base image names once every compose image is built (raises what the build raised)."""
    assert _build is not None, "the compose build starts when the session collects the compose tests"
    return _build.result(timeout=timeout)
