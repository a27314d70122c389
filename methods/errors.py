"""Errors of the methods. Each message names the method, option or batch field at fault."""


class MethodError(ValueError):
    """A method cannot be built or cannot use the batch it was given (bad config, wrong views)."""


class TrainingError(MethodError):
    """Training cannot go on (non-finite loss, bad data for the method, a full disk); names what and where."""
