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


class DamagedFile(ForgettingError, ValueError):
    """A file the package wrote cannot be read back (truncated, altered): names it and what to do."""

    def __init__(self, path, problem: str):
        self.path = path
        super().__init__(
            f"{path}: {problem}. The file is truncated or was altered since it was written. Re-run the command "
            "that wrote it (`forgetting run SPEC --out DIR` resumes a run from its last complete stage), or "
            "remove the folder and run again.")
