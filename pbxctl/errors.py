"""Exit codes of the contract (section 1) as exceptions the commands raise."""

from __future__ import annotations

__all__ = ["EXIT_DEPENDENCY", "EXIT_INVALID", "EXIT_USAGE", "CliError", "Invalid", "Unreachable"]

EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_DEPENDENCY = 3


class CliError(Exception):
    """A failure the CLI reports as one line on stderr with a given exit code."""

    exit_code = EXIT_INVALID

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class Invalid(CliError):
    """Refused input: names the object and the rule. Nothing was changed."""

    exit_code = EXIT_INVALID


class Unreachable(CliError):
    """A dependency (database, Asterisk, ...) cannot be reached."""

    exit_code = EXIT_DEPENDENCY
