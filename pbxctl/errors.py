"""Exit codes of the contract (section 1): the exceptions the commands raise, and the code each
group of the project's exceptions (pbx_base.errors) exits with."""

from __future__ import annotations

from pbx_base.errors import DependencyError, InvalidInput, NotConfigured, PbxError, Unavailable

__all__ = ["EXIT_DEPENDENCY", "EXIT_INVALID", "EXIT_USAGE", "CliError", "Invalid", "Unreachable", "exit_code_for"]

EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_DEPENDENCY = 3


class CliError(PbxError):
    """A failure the CLI reports as one line on stderr with a given exit code."""

    exit_code = EXIT_INVALID

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class Invalid(CliError, InvalidInput):
    """Refused input: names the object and the rule. Nothing was changed."""

    exit_code = EXIT_INVALID


class Unreachable(CliError, Unavailable):
    """A dependency (database, Asterisk, ...) cannot be reached."""

    exit_code = EXIT_DEPENDENCY


def exit_code_for(exc: PbxError) -> int:
    """A CliError's own code; otherwise the code of the exception's group."""
    if isinstance(exc, CliError):
        return exc.exit_code
    if isinstance(exc, NotConfigured):
        return EXIT_USAGE
    if isinstance(exc, DependencyError):
        return EXIT_DEPENDENCY
    return EXIT_INVALID
