"""Atomic writes: a reader sees the old file or the new one, and a failed write leaves the old one alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from aspp_edge.fileio import write_text_atomic


def test_write_text_atomic_replaces_or_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "results" / "table.json"
    assert write_text_atomic(target, '{"rows": 1}') == target and target.read_text() == '{"rows": 1}'
    write_text_atomic(target, '{"rows": 2}')
    assert target.read_text() == '{"rows": 2}'

    def half_then_fail(self, text, *args, **kwargs):
        Path.write_bytes(self, text[:3].encode())
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        write_text_atomic(target, '{"rows": 3}')
    monkeypatch.undo()
    assert target.read_text() == '{"rows": 2}'  # the previous result, whole
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.json"]  # no temporary left behind
