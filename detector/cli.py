"""What every entry point does with an exception: one line on stderr, the traceback in the log, an exit code.

    if __name__ == "__main__":
        run_cli(main)          # main() -> int exit code

A :class:`~detector.errors.UserError` (bad config, data, checkpoint, disk) prints ``error: <message>`` as one line
and exits with its kind's code (see :mod:`detector.errors`); anything else is a crash (exit 1), printed the same
way with a pointer to the traceback. The traceback always goes to the root logger at ERROR level with
``exc_info``, so a run's ``log.txt`` holds it; the terminal shows it only with ``--debug`` or ``LOG_LEVEL=DEBUG``.
"""
from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Callable

from .errors import EXIT_CRASH, UserError, exit_code_for

log = logging.getLogger("fatal")


def debug_enabled(argv: list[str] | None = None) -> bool:
    """True with ``--debug`` on the command line or ``LOG_LEVEL=DEBUG`` in the environment."""
    argv = sys.argv if argv is None else argv
    return "--debug" in argv or os.environ.get("LOG_LEVEL", "").upper() == "DEBUG"


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (continuation lines joined with '; ')."""
    text = str(exc).strip() or type(exc).__name__
    parts = [p.strip() for p in text.splitlines() if p.strip()]
    return "; ".join(parts)


def report_exception(exc: BaseException) -> int:
    """Log the traceback (log.txt), print one line to stderr, return the exit code for ``exc``."""
    code = exit_code_for(exc)
    kind = "error" if isinstance(exc, UserError) or code != EXIT_CRASH else "crash"
    if logging.getLogger().handlers:  # a run's log (log.txt) is set up: the traceback goes there
        log.error("%s: %s", kind, one_line(exc), exc_info=exc)
        for h in logging.getLogger().handlers:
            h.flush()
    elif debug_enabled():
        traceback.print_exception(exc, file=sys.stderr)
    if kind == "crash":
        msg = f"crash ({type(exc).__name__}): {one_line(exc)} (traceback in log.txt; run with --debug to see it here)"
    else:
        msg = f"error: {one_line(exc)}"
    if not _console_shows_fatal():
        print(msg, file=sys.stderr, flush=True)
    return code


def _console_shows_fatal() -> bool:
    """Whether a console handler installed by :func:`detector.logger.setup_logging` already printed the line."""
    root = logging.getLogger()
    return root.isEnabledFor(logging.ERROR) and any(getattr(h, "prints_fatal", False) for h in root.handlers)


def run_cli(main: Callable[[], int]) -> None:
    """Call ``main`` and exit with its code, turning exceptions into one line and an exit code."""
    try:
        code = main()
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one line + a code
        code = report_exception(exc)
    sys.exit(code)
