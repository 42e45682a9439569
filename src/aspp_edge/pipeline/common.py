"""What `run` and `sweep` share: the choice-list grammar, the out dir with its stage book and log,
the runtime-peaks stage, and each row's fraction of its runtime's peak."""

from __future__ import annotations

import datetime as _dt
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, choices_error
from ..fileio import write_text_atomic
from ..formats import BACKENDS, DEFAULT_BACKENDS
from ..stages import Stage, StageBook

ALL = "all"
PEAKS_FILE = "peaks.json"
PEAKS_VERSION = 1


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def parse_choices(value: str | list[str] | tuple[str, ...] | None, valid: tuple[str, ...], what: str, default: tuple[str, ...],
                  *, all_: tuple[str, ...] | None = None) -> list[str]:
    """`value` (comma-separated or a list) checked against `valid`; None: `default`; 'all': `all_` (default `valid`)."""
    if value is None:
        return list(default)
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    items = [v for v in items if v]
    if items == [ALL]:
        return list(all_ or valid)
    if not items:
        raise choices_error(what, "", (ALL, *valid))
    for v in items:
        if v not in valid:
            raise choices_error(what, v, (ALL, *valid))
    return list(dict.fromkeys(items))


def parse_backends(value: str | list[str] | tuple[str, ...] | None, default: tuple[str, ...] = DEFAULT_BACKENDS) -> list[str]:
    """Backend names checked against the registry; 'all' is the registry's default set (opt-in
    backends such as executorch-coreml and -vulkan are named)."""
    return parse_choices(value, tuple(BACKENDS), "backend", default, all_=DEFAULT_BACKENDS)


def check_unique(keys: list[str], what: str) -> None:
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup:
        raise ConfigError(f"model {dup!r} is asked for twice in one {what}")


@dataclass
class Workspace:
    """An out dir with its stage book (stages.json) and log file; `lines` keeps what was logged."""

    out: Path
    book: StageBook
    log_file: Path
    lines: list[str] = field(default_factory=list)

    def log(self, line: str) -> None:
        self.lines.append(line)
        with open(self.log_file, "a") as f:
            f.write(line + "\n")


def open_workspace(out_dir: str | Path, name: str, log_name: str, *, force: bool, echo: bool) -> Workspace:
    """Check `out_dir` (a folder, not a file; a book of another job refused unless `force`), create it
    and return its workspace. Stage lines go to the log file, and to the terminal when `echo`;
    third-party output of stage bodies goes to the log file only."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file, not a directory")
    book = StageBook(out, name, force=force)  # refuses another job's folder before anything is written
    out.mkdir(parents=True, exist_ok=True)
    ws = Workspace(out, book, out / log_name)

    def log(line: str) -> None:
        ws.log(line)
        if echo:
            print(line, flush=True)

    book.log, book.chatter = log, ws.log_file
    return ws


def peaks_stage(out: Path, threads: int | None) -> Stage:
    """The runtimes' 1x1-convolution throughput on this machine, into OUT/peaks.json."""
    from ..evaluate.latency import PEAK_CHANNELS, PEAK_LAYERS, PEAK_SIZE

    def write() -> None:
        from ..evaluate.latency import runtime_peaks

        write_text_atomic(out / PEAKS_FILE, json.dumps(runtime_peaks(out / "peak", threads=threads), indent=2))

    return Stage("runtime-peaks", {"v": PEAKS_VERSION, "threads": threads, "shape": [PEAK_LAYERS, PEAK_CHANNELS, PEAK_SIZE],
                                   "system": platform.system()}, [out / PEAKS_FILE], write)


def read_peaks(out: Path) -> dict[str, Any]:
    return json.loads((out / PEAKS_FILE).read_text())


def add_peak_fraction(rows: list[dict[str, Any]], peaks: dict[str, Any] | None) -> None:
    """Each row's `peak_fraction`: its GMAC/s over its runtime's peak at its precision (None untimed)."""
    for r in rows:
        peak = (peaks or {}).get(f"{r['backend']} {r['precision']}")
        r["peak_fraction"] = r["gmacs_per_s"] / peak["gmacs_per_s"] if peak and r.get("gmacs_per_s") else None

