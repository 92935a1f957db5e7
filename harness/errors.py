"""Errors that the CLI turns into one line on stderr and exit status 2."""

from __future__ import annotations


class HarnessError(Exception):
    """A problem with what the user asked for; the message is one line naming it and what is allowed."""


class ConfigError(HarnessError):
    """A config file, key or value that is not allowed."""


class OutOfMemoryError(ConfigError):
    """A compiled step that needs more device memory than there is (a smaller batch or model would fit)."""


class DataError(HarnessError):
    """Missing, truncated or foreign data files."""


class WorkdirError(HarnessError):
    """A work directory that cannot be used (missing run, foreign content, unwritable)."""


class ForeignCheckpointError(WorkdirError):
    """A checkpoint whose stored structure, shapes or dtypes belong to another model than the one restoring it."""


class TrainingError(HarnessError):
    """Training cannot go on (e.g. a non-finite loss)."""
