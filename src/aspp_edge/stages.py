"""Stages and the book that runs them: a plan is a list of `Stage`s; `StageBook.run_plan` runs each
one whose outputs are missing or whose inputs changed, and skips the rest.

`OUT/stages.json` records, per stage key, a hash of its inputs and a stamp of when it ran. A stage's
inputs include the stamps of the stages it reads from (`upstream`), so a stage that reruns makes
everything downstream of it rerun, and nothing else: a killed run resumes where it stopped, a
changed recipe section redoes what depends on it, and a deleted output is made again on its own.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .console import chatter_to
from .errors import ConfigError
from .fileio import atomic_path

STATE_FILE = "stages.json"


def _hash(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Stage:
    """One step of a plan: it runs `fn` to write `outputs`, and is redone when `inputs` or the stamp
    of an `upstream` stage (named in its inputs by the mapping's key) change."""

    key: str
    inputs: dict[str, Any]
    outputs: list[Path]
    fn: Callable[[], Any]
    upstream: dict[str, str] = field(default_factory=dict)  # input name -> upstream stage key
    resumable: bool = False  # fn takes resume=True when a killed run left this stage unfinished with the same inputs

    def resolved_inputs(self, book: StageBook) -> dict[str, Any]:
        return {**self.inputs, **{name: book.stamp(key) for name, key in self.upstream.items()}}


class StageBook:
    """stages.json: per stage key, {inputs hash, stamp, done, seconds}; plus the name of what ran there
    (a recipe, or the sweep), so two different jobs never share one folder by accident."""

    def __init__(self, out: Path, name: str, *, force: bool, log: Callable[[str], None] = lambda line: None) -> None:
        self.out, self.path, self.log = out, out / STATE_FILE, log
        self.chatter: Path | None = None  # where stage bodies' stdout and warnings go (chatter_to)
        self.state: dict[str, Any] = {"recipe": name, "stages": {}}
        if self.path.is_file():
            try:
                saved = json.loads(self.path.read_text())
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{str(self.path)!r} is not valid JSON ({exc}); remove it or choose another --out") from exc
            if saved.get("recipe") != name and not force:
                raise ConfigError(
                    f"out dir {str(out)!r} holds a run of recipe {saved.get('recipe')!r}, not {name!r}: reusing its "
                    "stages would mix two recipes' artifacts in one report. Choose another --out, or pass --force to "
                    "run here anyway (stages whose inputs changed are redone)"
                )
            self.state["stages"] = saved.get("stages", {})
        self.total = 0
        self.ran: list[str] = []
        self.reused: list[str] = []

    def _save(self) -> None:
        self.state["recipe_updated"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(self.state, indent=2))

    def stamp(self, key: str) -> str | None:
        return self.state["stages"].get(key, {}).get("stamp")

    def run(self, key: str, inputs: dict[str, Any], outputs: list[Path], fn: Callable[..., Any], *, resumable: bool = False) -> bool:
        """Run `fn` unless the stage's outputs exist and its inputs are unchanged; True when it ran.
        `resumable`: call `fn(resume=...)`, True when this stage was started with these inputs and not finished."""
        prefix = f"[{len(self.ran) + len(self.reused) + 1}/{self.total}] {key}"
        rec, digest = self.state["stages"].get(key), _hash(inputs)
        if rec and rec.get("done") and rec.get("inputs") == digest and all(p.exists() for p in outputs):
            self.reused.append(key)
            self.log(f"{prefix}: reused")
            return False
        why = "new" if not rec else "inputs changed" if rec.get("inputs") != digest else "outputs missing" if rec.get("done") else "resumed"
        self.log(f"{prefix}: running ({why})")
        self.state["stages"][key] = {"inputs": digest, "done": False}
        self._save()
        started = time.perf_counter()
        with chatter_to(self.chatter):
            fn(resume=why == "resumed") if resumable else fn()
        seconds = time.perf_counter() - started
        self.state["stages"][key] = {"inputs": digest, "done": True, "stamp": uuid.uuid4().hex, "seconds": round(seconds, 2)}
        self._save()
        self.ran.append(key)
        self.log(f"{prefix}: ran in {seconds:.1f} s")
        return True

    def run_stage(self, stage: Stage) -> bool:
        return self.run(stage.key, stage.resolved_inputs(self), stage.outputs, stage.fn, resumable=stage.resumable)

    def run_plan(self, plan: list[Stage]) -> None:
        self.total = len(plan)
        for stage in plan:
            self.run_stage(stage)
