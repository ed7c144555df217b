"""The errors every module raises: each a failure the user can act on, whose message names
the file or flag and what was expected. A leaf: imports nothing, so any module (and the
command line's `run`, before torch loads) can use them."""


class DataError(Exception):
    """Bad dataset input. The message names the file or folder and what was expected."""


class CheckpointError(Exception):
    """A file that cannot or must not be loaded, or a run folder in the way."""


class WeightsError(Exception):
    """Weights that cannot be found or do not fit; the message says which file and where."""


class UsageError(ValueError):
    """A flag value that does not fit the model; the message names the flag."""


class TrainingError(Exception):
    """A run that cannot go on (a non-finite loss, a split smaller than a batch)."""


class TestSetMismatch(ValueError):
    """Two runs compared on different test images."""


# the errors a task script turns into one readable line (shared.cli.run)
KNOWN = (DataError, CheckpointError, WeightsError, UsageError, TrainingError)
