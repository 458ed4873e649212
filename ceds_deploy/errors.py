"""The project's exceptions, one hierarchy under `CedsError`.

The CLI prints a `CedsError` as one red line naming the file or value and what is wrong (exit 1;
`ConfigError` raised while parsing options exits 2). Anything else reaching the CLI is a bug.
`ConfigError` is also a `ValueError`, `BackendError` and `UsageError` are `RuntimeError`s, so callers that catch the
built-in types keep working.
"""

from __future__ import annotations


class CedsError(Exception):
    """Base class for every error a user can cause and fix."""


class ScanError(CedsError):
    """A scan (or label) file that cannot be used: unreadable, wrong dimensionality, empty, NaN."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class OutputError(CedsError):
    """An output folder or file that cannot be written (inside the input, read-only, full, locked)."""


class ModelInputError(CedsError):
    """A tensor given to the network or a backend has the wrong shape or dtype."""


class ArtifactError(CedsError):
    """A checkpoint, ONNX file or engine that is corrupt, foreign or does not match this install."""


class BackendUnavailableError(CedsError):
    """A backend the user asked for cannot run here (package or device missing)."""


class BackendError(CedsError, RuntimeError):
    """A backend that failed while running (wrong outputs, used before activation, out of memory)."""


class UsageError(CedsError, RuntimeError):
    """The library called in a way it does not support (a network in train mode given to inference,
    a backend used before `activate()`)."""


class DatasetError(CedsError):
    """A training dataset folder that is inconsistent (missing files, bad labels, ...)."""


class ConfigError(CedsError, ValueError):
    """A configuration value outside its allowed range."""
