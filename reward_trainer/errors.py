"""Every error a user can cause, in one place. Each ends a command with one line and exit code 2 (a diverged run,
`NonFiniteLossError`, with exit code 1); this module imports nothing of the package, so any module can raise them."""


class UsageError(ValueError):
    """A bad command line or configuration file."""


class DataError(ValueError):
    """Bad input data; the message names the file, row and field."""


class ModelLoadError(ValueError):
    """The model or tokenizer could not be loaded; the message says which path and why."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; raised before that step updates the weights."""
