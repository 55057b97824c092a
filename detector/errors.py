"""Error kinds a user can act on, and the process exit codes that tell them apart.

Every entry point (train.py, evaluate.py, predict.py, scripts) turns one of these into a single line on
stderr and exits with its code; the traceback goes to the run's ``log.txt`` (and to the terminal with
``--debug`` or ``LOG_LEVEL=DEBUG``). Codes (also listed in the README):

    0   finished
    1   an uncaught crash (a bug: please report it with log.txt)
    2   config or command-line error
    3   data error (annotation file, image)
    4   checkpoint error (missing, corrupted, from another config)
    5   I/O error (disk full, permission denied)
    6   non-finite loss (nan_dump.pth written)
    75  stopped by a signal (SIGTERM/SIGINT) after saving last.pth: resumable, requeue with --resume
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_CONFIG = 2
EXIT_DATA = 3
EXIT_CHECKPOINT = 4
EXIT_IO = 5
EXIT_NON_FINITE = 6
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later", what a requeue script looks for


class UserError(Exception):
    """An error caused by the user's input, reported as one line; ``exit_code`` says which kind."""
    exit_code = EXIT_CRASH


class ConfigError(UserError, ValueError):
    """A config file, override or command-line option is invalid; the message names the key and its source."""
    exit_code = EXIT_CONFIG


class DataError(UserError, RuntimeError):
    """A dataset file or image is unusable; the message names the file and the image id."""
    exit_code = EXIT_DATA


class CheckpointError(UserError, RuntimeError):
    """A checkpoint cannot be used for what was asked; the message says what differs or what is broken."""
    exit_code = EXIT_CHECKPOINT


class DiskError(UserError, OSError):
    """Writing an output failed (disk full, permission denied); the previous file is left intact."""
    exit_code = EXIT_IO


class NonFiniteLossError(UserError, RuntimeError):
    """A loss became NaN/inf; ``nan_dump.pth`` holds the inputs and the state before the failing step."""
    exit_code = EXIT_NON_FINITE


def exit_code_for(exc: BaseException) -> int:
    """The exit code for an exception reaching an entry point (1 for anything that is not a user error)."""
    if isinstance(exc, UserError):
        return exc.exit_code
    if isinstance(exc, OSError) and exc.errno in (28, 13, 30, 122):  # ENOSPC, EACCES, EROFS, EDQUOT
        return EXIT_IO
    return EXIT_CRASH
