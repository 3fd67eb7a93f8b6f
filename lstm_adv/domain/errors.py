"""The error hierarchy.

Every error a user can cause derives from :class:`LstmAdvError`; the CLI turns
one into a single red line and exit code 1. Subclasses also inherit the
built-in exception they resemble, so callers can catch either.
"""

from __future__ import annotations


class LstmAdvError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class ConfigError(LstmAdvError, ValueError):
    """A configuration file or option is invalid (unknown key, wrong type, bad value)."""


class ValidationError(LstmAdvError, ValueError):
    """A domain value breaks one of its invariants."""


class FeatureSpecError(ValidationError):
    """The feature definitions file is invalid."""


class RunIdError(LstmAdvError, ValueError):
    """A string is not a well-formed run id."""


class RunNotFoundError(LstmAdvError, KeyError):
    """No run matches an id or prefix."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class AmbiguousRunError(LstmAdvError, KeyError):
    """A prefix matches more than one run."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RunKindError(LstmAdvError, ValueError):
    """A run of the wrong kind was given as a parent."""


class RunStatusError(LstmAdvError, ValueError):
    """An interrupted run was given where a complete one is needed (only ``--resume`` takes it)."""


class RunStoreError(LstmAdvError, OSError):
    """The run store cannot be read or written."""


class DatabaseError(LstmAdvError, RuntimeError):
    """A database cannot be reached, authenticated against, or queried."""


class ServerError(DatabaseError):
    """The embedded PostgreSQL server cannot be started, found or stopped."""


class DataError(LstmAdvError, ValueError):
    """Input data (demo files, query results, tensors) are missing or malformed."""


class ChecksumError(DataError):
    """A stored file no longer matches the checksum its run's manifest recorded."""


class RunInterruptedError(LstmAdvError):
    """A long command stopped on Ctrl-C or SIGTERM after keeping what it finished; the CLI exits with 130."""


class ReportError(LstmAdvError, RuntimeError):
    """A report cannot be rendered: no document for the run kind, a failing cell, a missing tool."""


class DeviceMemoryError(LstmAdvError, MemoryError):
    """Not even the smallest batch of a piece of work fits in the device's memory."""
