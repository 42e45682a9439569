"""The command line: list --stats, and one-line errors with exit status 2."""

from __future__ import annotations

import re

import pytest

from aspp_edge.cli import main
from aspp_edge.models import list_models


def test_list_names(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in list_models():
        assert name in out


def test_list_stats(capsys):
    assert main(["list", "--stats", "--size", "256", "--width-mult", "0.25"]) == 0
    out = capsys.readouterr().out
    rows = {m.group(1): [float(v) for v in m.groups()[1:]]
            for m in re.finditer(r"^(\w+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)}
    assert set(rows) == set(list_models())
    for params, gmacs, head_params, head_gmacs in rows.values():
        assert 0 < head_params < params and 0 < head_gmacs < gmacs


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--recipe", "nope", "--out", "x"], "recipe 'nope' is neither a built-in recipe nor a file"),
        (["list", "--stats", "--size", "64", "--output-stride", "4"], "output_stride 4 is not supported; valid choices: 8, 16"),
        (["list", "--stats", "--backbone", "vgg"], "unknown backbone 'vgg'; valid choices: mobilenet_v2, mobilenet_v3_large"),
    ],
)
def test_errors_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aspp-edge: error: ") and message in err and "\n" not in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("command", ["run", "quantize", "export", "sweep", "bench", "train"])
def test_help_says_each_default_once(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: None)" not in text and "(default: False)" not in text
    for option in re.split(r"\s(?=--[a-z])", text):  # each option's help: at most one "(default"
        assert option.count("(default") <= 1, option
    assert "(default: 50)" in text or command != "run"  # a real default is still said
