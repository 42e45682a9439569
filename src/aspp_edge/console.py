"""The terminal: where progress bars draw, and where third-party chatter does not go.

While a pipeline stage runs (`chatter_to`), what other libraries print (litert-torch's converter
progress on stdout, coremltools' pass-pipeline bars on stderr, Python warnings) is appended to the
run's log file; our own bars (`progress_bar`) still draw on the terminal."""

from __future__ import annotations

import contextlib
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
    """Append what Python code prints to stdout and stderr, and Python warnings, to `path` while the
    block runs; `progress_bar`s stay on the terminal. None (or already inside one): nothing changes."""
    global _terminal
    if path is None or _terminal is not None:
        yield
        return
    terminal = sys.stderr
    with open(path, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f), warnings.catch_warnings():
        def show(message, category, filename, lineno, file=None, line=None):
            f.write(warnings.formatwarning(message, category, filename, lineno, line))

        warnings.showwarning = show
        _terminal = terminal
        try:
            yield
        finally:
            _terminal = None


def progress_line(line: str, *, err: bool = False) -> None:
    """One of our lines, printed above the progress bars (tqdm.write) to stdout (`err`: stderr), and to
    the terminal even inside `chatter_to`."""
    from tqdm import tqdm

    tqdm.write(line, file=_terminal or (sys.stderr if err else sys.stdout))
