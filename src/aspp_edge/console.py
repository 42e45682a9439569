"""The terminal: where progress bars draw, and where third-party chatter does not go.

While a pipeline stage runs (`chatter_to`), what other libraries print (litert-torch's converter
progress on stdout, coremltools' pass-pipeline bars on stderr, Python warnings) is appended to the
run's log file; our own bars (`progress_bar`) still draw on the terminal."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

_terminal: TextIO | None = None  # the real stderr while chatter is redirected


def progress_bar(*args: Any, **kwargs: Any):
    """tqdm on the terminal's stderr, even while a stage's chatter goes to a log."""
    from tqdm import tqdm

    return tqdm(*args, file=_terminal or sys.stderr, **kwargs)


@contextlib.contextmanager
def chatter_to(path: Path | None) -> Iterator[None]:
    """Append what Python code prints to stdout and stderr, Python warnings and, when stderr is the
    process's own file descriptor 2, what C++ libraries log there (absl and TFLite INFO lines), to
    `path` while the block runs; `progress_bar`s and `progress_line`s stay on the terminal. None (or
    already inside one): nothing changes."""
    global _terminal
    if path is None or _terminal is not None:
        yield
        return
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(open(path, "a"))
        terminal: TextIO = sys.stderr
        if _is_fd2(sys.stderr):  # C++ writes to fd 2 itself: point fd 2 at the log, keep a copy for the bars
            sys.stderr.flush()
            saved = os.dup(2)
            terminal = stack.enter_context(open(os.dup(saved), "w", buffering=1))
            os.dup2(f.fileno(), 2)
            stack.callback(os.close, saved)
            stack.callback(os.dup2, saved, 2)
        stack.enter_context(contextlib.redirect_stdout(f))
        stack.enter_context(contextlib.redirect_stderr(f))
        stack.enter_context(warnings.catch_warnings())

        def show(message, category, filename, lineno, file=None, line=None):
            f.write(warnings.formatwarning(message, category, filename, lineno, line))

        warnings.showwarning = show
        _terminal = terminal
        try:
            yield
        finally:
            _terminal = None
            f.flush()


def _is_fd2(stream: TextIO) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):  # pytest's capture, StringIO: no descriptor
        return False


def progress_line(line: str, *, err: bool = False) -> None:
    """One of our lines, printed above the progress bars (tqdm.write) to stdout (`err`: stderr), and to
    the terminal even inside `chatter_to`."""
    from tqdm import tqdm

    tqdm.write(line, file=_terminal or (sys.stderr if err else sys.stdout))
