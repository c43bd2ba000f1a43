"""Exception types with messages that name the file and what was expected."""

__all__ = ["NeuroreconError", "ConfigError", "DataError", "MissingStageError", "MissingDependencyError"]


class NeuroreconError(Exception):
    """Base class of every error neurorecon raises on purpose (the CLI exits 2 on these)."""


class ConfigError(NeuroreconError, ValueError):
    """A configuration file or override is malformed (unknown key, wrong type, unknown profile)."""


class DataError(NeuroreconError):
    """An input file is missing or malformed.

    Parameters
    ----------
    path : str or Path
        The offending file.
    expected : str
        What was expected of it.
    found : str, optional
        What was found instead.
    """

    def __init__(self, path, expected, found=None):
        self.path = str(path)
        self.expected = expected
        self.found = found
        msg = f"{self.path}: expected {expected}"
        if found is not None:
            msg += f", found {found}"
        super().__init__(msg)


class MissingStageError(NeuroreconError, FileNotFoundError):
    """A stage's input (an earlier stage's artifacts) is missing or incomplete."""


class MissingDependencyError(NeuroreconError, RuntimeError):
    """A program or package the configured computation needs is not installed (e.g. Java for METEOR)."""
