"""Exceptions with messages meant for users (the CLI prints them and exits with status 2)."""

from __future__ import annotations


class ForgettingError(Exception):
    """Base class for errors whose message is written for the user."""


class SpecError(ForgettingError, ValueError):
    """Bad input: names the field and what is allowed. Raised before any work starts."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class TrainingDiverged(ForgettingError, RuntimeError):
    """The loss became NaN or infinite; what was completed before is kept on disk."""
