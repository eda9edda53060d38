"""The errors a user can fix, in a module that imports nothing heavy: the stage scripts catch them before torch
is loaded, so that a mistyped key or a missing earlier stage is reported at once."""

__all__ = ["DataError", "WeightsError", "TrainingError"]


class DataError(RuntimeError):
    """Input data that cannot be used; the message names the file and what to do."""


class WeightsError(RuntimeError):
    """A weights file is absent, unreadable or does not fit the model; the message says which and why."""


class TrainingError(RuntimeError):
    """Training cannot go on (for example a non-finite loss); the message says where it stopped."""
