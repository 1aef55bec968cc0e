"""Where the files the code reads at run time are: every reader asks this module, none builds a path.

- ``sql_dir()``: the schema migrations (top-level ``sql/``),
- ``asterisk_conf_dir()``: a node's Asterisk configuration templates (top-level ``asterisk_conf/``),
- ``kamailio_conf_dir()``: the cluster's SIP edge configuration (top-level ``kamailio_conf/``),
- ``example(name)``: a file of the top-level ``examples/`` (the demo's call),
- ``dev_asterisk_conf_dir()``: dialplan only the dev stack loads (``devstack/asterisk_dev/``),
- ``sipp_scenario(name)``: the sipp scenarios the dev stack plays (``devstack/sipp_scenarios/``).

The top-level folders keep their place in the checkout (the project's layout) and a wheel carries
them as package data under ``pbx_base/`` (pyproject.toml maps them there), read with
importlib.resources. A source checkout, editable install or not, reads its own folders instead, so
an edit there is seen without reinstalling and a worktree never reads another tree's copy.

Naming devstack's data imports only ``devstack/__init__.py`` (a docstring), none of its code.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

__all__ = [
    "asterisk_conf_dir",
    "dev_asterisk_conf_dir",
    "example",
    "kamailio_conf_dir",
    "on_disk",
    "sipp_scenario",
    "sql_dir",
]

_CHECKOUT = Path(__file__).resolve().parent.parent


def _top_level(name: str) -> Traversable:
    if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / name).is_dir():
        return _CHECKOUT / name
    return files("pbx_base") / name


def sql_dir() -> Traversable:
    return _top_level("sql")


def asterisk_conf_dir() -> Traversable:
    return _top_level("asterisk_conf")


def kamailio_conf_dir() -> Traversable:
    return _top_level("kamailio_conf")


def example(name: str) -> Traversable:
    return _top_level("examples") / name


def dev_asterisk_conf_dir() -> Traversable:
    return files("devstack") / "asterisk_dev"


def sipp_scenario(name: str) -> Path:
    """A file name, not a Traversable: the sipp binary opens it."""
    return on_disk(files("devstack") / "sipp_scenarios" / name)


def on_disk(resource: Traversable) -> Path:
    """``resource`` as a file system path: wheels install unzipped, so package data is on disk."""
    if not isinstance(resource, Path):
        raise RuntimeError(f"{resource} is not on the file system: install the package unzipped")
    return resource
