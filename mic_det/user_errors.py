"""Bad input ends a command with its one-line message, not a traceback.

mic_det's checks raise ``FileNotFoundError``, ``ValueError`` or ``KeyError``
with a message that already names the file, key or dataset to fix. A
traceback below it reads like a crash in mic_det and buries the one line
that matters, so the command-line tools print only the message. The same
exception types raised anywhere else (a bug in mic_det's dependencies, say)
keep their traceback, and ``--debug`` keeps it for everything.
"""
import contextlib
import os
from typing import Iterator

__all__ = ["is_input_error", "input_error_message", "exit_on_input_error"]

_INPUT_ERRORS = (FileNotFoundError, ValueError, KeyError)
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_TOOLS_DIR = os.path.join(os.path.dirname(_PACKAGE_DIR), "tools")


def _raised_in(exc: BaseException) -> str:
    """The file of the frame that raised ``exc``."""
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.abspath(tb.tb_frame.f_code.co_filename)


def is_input_error(exc: BaseException) -> bool:
    """Whether ``exc`` is one of mic_det's (or its tools') checks of the user's input."""
    if not isinstance(exc, _INPUT_ERRORS):
        return False
    where = _raised_in(exc)
    return any(where.startswith(d + os.sep) for d in (_PACKAGE_DIR, _TOOLS_DIR))


def input_error_message(exc: BaseException) -> str:
    """The message alone: ``str(KeyError("x"))`` would add quotes around it."""
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        return exc.args[0]
    return str(exc)


@contextlib.contextmanager
def exit_on_input_error(debug: bool = False) -> Iterator[None]:
    """Turn an input error into ``SystemExit("error: <message>")`` (exit status 1).

    With ``debug`` every exception propagates with its traceback.
    """
    try:
        yield
    except _INPUT_ERRORS as e:
        if debug or not is_input_error(e):
            raise
        raise SystemExit(f"error: {input_error_message(e)} (--debug shows the traceback)") from None
