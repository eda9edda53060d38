"""The errors a user can fix, in a module that imports nothing: the stage scripts catch them before torch is
loaded, so that a mistyped key or a missing earlier stage is reported at once. Every module raises these, and
imports them from here."""

__all__ = ["ConfigError", "DataError", "WeightsError", "TrainingError", "BusyError", "USER_ERRORS"]


class ConfigError(ValueError):
    """A configuration problem the user must fix; the message lists every problem found."""


class DataError(RuntimeError):
    """Input data that cannot be used; the message names the file and what to do."""


class WeightsError(RuntimeError):
    """A weights file is absent, unreadable or does not fit the model; the message says which and why."""


class TrainingError(RuntimeError):
    """Training cannot go on (for example a non-finite loss); the message says where it stopped."""


class BusyError(RuntimeError):
    """Another run holds the lock on an output this stage would write; the message names that run."""


# What a stage reports as a message and exit status 2 rather than a traceback (ternaus.cli).
USER_ERRORS = (ConfigError, DataError, WeightsError, TrainingError, BusyError, FileNotFoundError)
