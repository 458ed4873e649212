"""The project's exceptions. The CLI prints these as one red line; anything else is a bug."""

from __future__ import annotations


class CedsError(Exception):
    """Base class for every error a user can cause and fix."""


class ScanError(CedsError):
    """A scan (or label) file that cannot be used: unreadable, wrong dimensionality, empty, NaN."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ModelInputError(CedsError):
    """A tensor given to the network or a backend has the wrong shape or dtype."""


class ArtifactError(CedsError):
    """A checkpoint, ONNX file or engine that is corrupt, foreign or does not match this install."""


class BackendUnavailableError(CedsError):
    """A backend the user asked for cannot run here (package or device missing)."""


class DatasetError(CedsError):
    """A training dataset folder that is inconsistent (missing files, bad labels, ...)."""


class ConfigError(CedsError):
    """A configuration value outside its allowed range."""
