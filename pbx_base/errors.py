"""The project's exceptions: one root, grouped by what the caller can do about them.

Modelled on httpx's ``_exceptions.py``: catch ``PbxError`` for anything of ours, or a group::

    PbxError
    ├── InvalidInput        the input breaks a rule; nothing was changed      (CLI exit 1)
    │     ConfigError, NodeRefused, PlayError, pbxctl's Invalid
    ├── NotFound            a name the caller gave does not exist (LookupError) (CLI exit 1)
    │     UnknownTenant
    ├── NotConfigured       a required setting is missing                      (CLI exit 2)
    │     MissingDsn
    └── DependencyError     a service we depend on failed                      (CLI exit 3)
          ├── Unavailable   it could not be reached, did not answer, or dropped us
          │     DatabaseUnavailable, AmiUnreachable, AmiDisconnected, AriUnavailable,
          │     pbxctl's Unreachable
          ├── AmiError, AriError's status errors: it answered with a refusal
          └── StackError    the local dev stack (Postgres, chroot, Asterisk, services) failed
                PostgresError, ChrootError, AsteriskError, ServicesError

Each leaf keeps the builtin base its callers catch (ValueError, LookupError, ConnectionError,
RuntimeError) next to its group. Only NotFound is a builtin's (LookupError) itself; the other
groups have none, so catching a group never catches a library's exception by accident. The CLI
maps groups to its exit codes (pbxctl/errors.py).
"""

from __future__ import annotations

__all__ = [
    "DependencyError",
    "InvalidInput",
    "NotConfigured",
    "NotFound",
    "PbxError",
    "StackError",
    "Unavailable",
    "UnknownTenant",
]


class PbxError(Exception):
    """Root of every exception the project raises on purpose."""


class InvalidInput(PbxError):
    """Refused input (a config file, a scenario, a request): the message names the object and the
    rule it breaks. Nothing was changed."""


class NotFound(PbxError, LookupError):
    """A name the caller gave (a tenant, a call) does not exist."""


class NotConfigured(PbxError):
    """A setting the operation needs (a DSN, a URL) is not set: a usage error, not bad data."""


class DependencyError(PbxError):
    """A service we depend on (Postgres, Asterisk's AMI or ARI, the dev stack) failed."""


class Unavailable(DependencyError):
    """The service could not be reached, did not answer in time, or dropped the connection. What
    was sent may or may not have been applied."""


class StackError(DependencyError):
    """The local development stack could not be set up or run."""


class UnknownTenant(NotFound):
    """No tenant of that name (or domain) exists."""
