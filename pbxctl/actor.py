"""Who the audit trail records for a change made through ``pbxctl``: ``pbxctl:<os user>``."""

from __future__ import annotations

import getpass
import os

__all__ = ["cli_actor"]


def cli_actor() -> str:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        # No login name and no passwd entry (a bare container uid): the uid still says who.
        user = f"uid{os.getuid()}"
    return f"pbxctl:{user}"
