"""Errors caused by the user's input rather than by a bug.

Each is raised identically on every rank (they come from checks every rank
runs on the same config, files and checkpoints), so entry points print the
message once, without a traceback, and exit non-zero.
"""

import sys


class UsageError(Exception):
    """Bad configuration, data or checkpoint; the message says what and where."""


class ConfigError(UsageError, ValueError):
    """A configuration that cannot run; the message lists every problem found."""


class DataError(UsageError, ValueError):
    """Unreadable or malformed data; the message names the file, line and field."""


class CheckpointError(UsageError, ValueError):
    """A checkpoint that is missing, incomplete, not ours, or for another model."""


class DamagedCheckpoint(CheckpointError):
    """A checkpoint whose files are missing, cut short or unreadable; an older one may do."""


class TrainingError(UsageError):
    """A run that cannot go on (it diverged); the message says why and what to change."""


class RewardServerError(UsageError):
    """A remote reward server that cannot be reached or answers wrongly; the message names the URL."""


def exit_on_usage_error(run, rank: int):
    """`run()`'s result; a UsageError (the same on every rank) is printed once, by rank 0,
    without a traceback, and every rank exits with status 2."""
    try:
        return run()
    except UsageError as error:
        if rank == 0:
            print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
