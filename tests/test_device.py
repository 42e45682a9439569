"""`aspp-edge bench-device`: parsing of the benchmark binaries' output (sample outputs in
tests/data/device, see its README), the refusals when adb, a device or a binary is missing, and
the push/run/parse sequence against a stand-in adb script (no phone on CI)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from aspp_edge.cli import main
from aspp_edge.evaluate.device import DeviceError, bench_device, parse_benchmark_model, parse_executor_runner
from aspp_edge.evaluate.report import ROW_FIELDS

DATA = Path(__file__).parent / "data" / "device"


def test_benchmark_model_with_percentiles():
    t = parse_benchmark_model((DATA / "benchmark_model_percentiles.txt").read_text())
    # the timed runs' line (the second count= line), microseconds -> ms
    assert t.runs == 431 and t.mean_ms == pytest.approx(2.3094) and t.median_ms == pytest.approx(2.301)
    assert t.min_ms == pytest.approx(2.188) and t.max_ms == pytest.approx(2.873) and t.std_ms == pytest.approx(0.064)
    assert t.init_ms == pytest.approx(21.5) and t.first_ms == pytest.approx(4.21)
    assert t.peak_memory_mb == pytest.approx(14.6)  # periodic monitoring wins over the delta


def test_benchmark_model_without_percentiles():
    t = parse_benchmark_model((DATA / "benchmark_model_plain.txt").read_text())
    assert t.runs == 190 and t.mean_ms == pytest.approx(5.2312) and t.median_ms is None and t.p90_ms is None
    assert t.init_ms == pytest.approx(8.41) and t.peak_memory_mb == pytest.approx(12.75)


def test_benchmark_model_all_same_runs():
    t = parse_benchmark_model("INFO: count=3 curr=1500(all same)\n")
    assert t.runs == 3 and t.mean_ms == pytest.approx(1.5) and t.min_ms == pytest.approx(1.5)


def test_executor_runner():
    t = parse_executor_runner((DATA / "executor_runner.txt").read_text())
    assert t.runs == 50 and t.mean_ms == pytest.approx(117.25 / 50) and t.median_ms is None


@pytest.mark.parametrize("parse, name, message", [
    (parse_benchmark_model, "benchmark_model_failed.txt", "Failed to mmap model"),
    (parse_executor_runner, "executor_runner_failed.txt", "FileDataLoader::from() failed"),
])
def test_failed_runs_are_reported_with_the_tool_output(parse, name, message):
    with pytest.raises(DeviceError, match="printed no timing|did not report") as err:
        parse((DATA / name).read_text())
    assert message in str(err.value)  # the tool's own last lines travel with the error


def fake_adb(folder: Path, devices: str, log: Path) -> Path:
    """A stand-in for adb: lists `devices`, logs every call, answers getprop, and prints the sample
    outputs for the benchmark binaries. Each `shell` command line is split as the device's POSIX sh
    would split it (quotes, and `;`, `&`, `|` as separate tokens) and logged to `<log>.shell.jsonl`."""
    script = folder / "adb"
    script.write_text(f"""#!{sys.executable}
import json, shlex, sys
args = sys.argv[1:]
open({str(log)!r}, "a").write(" ".join(args) + "\\n")
if args[0] == "-s":
    args = args[2:]
tokens = list(shlex.shlex(args[1], posix=True, punctuation_chars=True)) if args[0] == "shell" else []
if tokens:
    open({str(log) + ".shell.jsonl"!r}, "a").write(json.dumps(tokens) + "\\n")
if args[0] == "devices":
    print("List of devices attached")
    print({devices!r})
elif tokens[:1] == ["getprop"]:
    print({{"ro.product.model": "Pixel 8", "ro.build.version.release": "15", "ro.product.cpu.abi": "arm64-v8a"}}.get(tokens[-1], ""))
elif tokens and tokens[0].endswith("/benchmark_model") and tokens[1].startswith("--graph="):
    print(open({str(DATA / "benchmark_model_percentiles.txt")!r}).read())
elif tokens and tokens[0].endswith("/executor_runner") and tokens[1].startswith("--model_path="):
    print(open({str(DATA / "executor_runner.txt")!r}).read())
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


@pytest.fixture
def binaries(tmp_path):
    paths = {}
    for name in ("benchmark_model", "executor_runner"):
        paths[name] = tmp_path / name
        paths[name].write_bytes(b"\x7fELF stand-in")
    return paths


def device_artifacts(quick_run) -> list[Path]:
    folder = quick_run / "sep_aspp" / "artifacts"
    return [folder / "quick_sep_aspp_ptq_tflite_int8.tflite", folder / "quick_sep_aspp_ptq_executorch_int8.pte"]


def test_bench_device_pushes_runs_and_reports_host_schema_rows(quick_run, tmp_path, binaries):
    log = tmp_path / "adb.log"
    adb = fake_adb(tmp_path, "R5CX123\tdevice", log)
    result = bench_device(device_artifacts(quick_run), tflite_benchmark=str(binaries["benchmark_model"]),
                          executorch_runner=str(binaries["executor_runner"]), adb=str(adb), threads=4, runs=50, progress=False)
    assert result["device"] == {"model": "Pixel 8", "android": "15", "abi": "arm64-v8a", "soc": "", "serial": "R5CX123"}
    tfl, pte = result["artifacts"]
    assert set(ROW_FIELDS) <= set(tfl) and tfl["miou"] is None and tfl["backend"] == "tflite" and tfl["precision"] == "int8"
    assert tfl["latency_ms"]["median"] == pytest.approx(2.301) and tfl["load_ms"] == pytest.approx(21.5)
    assert pte["latency_ms"]["mean"] == pytest.approx(2.345) and pte["latency_ms"]["median"] is None
    assert "Pixel 8" in tfl["evaluated_by"] and "benchmark_model" in tfl["evaluated_by"]
    calls = log.read_text().splitlines()
    assert any(c.startswith("-s R5CX123 push") and c.endswith("/data/local/tmp/aspp_edge/benchmark_model") for c in calls)
    assert any("--graph=/data/local/tmp/aspp_edge/quick_sep_aspp_ptq_tflite_int8.tflite --num_threads=4 --num_runs=50" in c for c in calls)
    assert any("--model_path=/data/local/tmp/aspp_edge/quick_sep_aspp_ptq_executorch_int8.pte --num_executions=50 --cpu_threads=4" in c
               for c in calls)


def test_file_names_with_spaces_and_semicolons_stay_one_argument(quick_run, tmp_path, binaries):
    """The device's shell gets each file name as one quoted argument: a space does not split it
    and a `;` does not end the command (nothing is injected)."""
    import shutil

    from aspp_edge.formats.manifest import manifest_path

    src = device_artifacts(quick_run)[0]
    odd = tmp_path / "my model; touch pwned $(id).tflite"
    shutil.copy2(src, odd)
    shutil.copy2(manifest_path(src), manifest_path(odd))
    log = tmp_path / "adb.log"
    adb = fake_adb(tmp_path, "R5CX123\tdevice", log)
    (row,) = bench_device([odd], tflite_benchmark=str(binaries["benchmark_model"]), adb=str(adb), threads=2, runs=7,
                          progress=False)["artifacts"]
    assert row["latency_ms"]["median"] == pytest.approx(2.301)
    remote = f"/data/local/tmp/aspp_edge/{odd.name}"
    commands = [json.loads(line) for line in (tmp_path / "adb.log.shell.jsonl").read_text().splitlines()]
    assert ["/data/local/tmp/aspp_edge/benchmark_model", f"--graph={remote}", "--num_threads=2", "--num_runs=7", "--warmup_runs=5",
            "--use_xnnpack=true", "--report_peak_memory_footprint=true"] in commands
    assert ["rm", "-f", remote] in commands
    assert not any(t in (";", "&", "&&", "|", "||") for tokens in commands for t in tokens), commands
    assert any(line.endswith(f"push {odd} {remote}") for line in log.read_text().splitlines())  # adb push takes argv, no shell


def test_bench_device_cli_writes_json(quick_run, tmp_path, binaries, capsys):
    adb = fake_adb(tmp_path, "emulator-5554\tdevice", tmp_path / "adb.log")
    out = tmp_path / "device.json"
    argv = ["bench-device", "--adb", "--adb-path", str(adb), "--tflite-benchmark", str(binaries["benchmark_model"]),
            "--json", str(out), str(device_artifacts(quick_run)[0])]
    assert main(argv) == 0
    assert "Pixel 8 (Android 15" in capsys.readouterr().out
    assert json.loads(out.read_text())["artifacts"][0]["latency_ms"]["p90"] is None


@pytest.mark.parametrize("devices, serial, message", [
    ("", None, "no Android device attached"),
    ("R5CX123\tunauthorized", None, "R5CX123 is unauthorized"),
    ("A1\tdevice\nB2\tdevice", None, "several Android devices attached; choose one with --serial: A1, B2"),
    ("A1\tdevice", "Z9", "no device 'Z9' attached; valid choices: A1"),
])
def test_device_refusals(quick_run, tmp_path, binaries, devices, serial, message):
    adb = fake_adb(tmp_path, devices, tmp_path / "adb.log")
    with pytest.raises(DeviceError, match=message.replace("(", r"\(")):
        bench_device(device_artifacts(quick_run)[:1], tflite_benchmark=str(binaries["benchmark_model"]), adb=str(adb), serial=serial,
                     progress=False)
    assert not any("push" in c for c in (tmp_path / "adb.log").read_text().splitlines())  # nothing sent


def test_missing_adb_and_binaries_are_refused(quick_run, tmp_path, binaries, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("ANDROID_HOME", raising=False)
    monkeypatch.delenv("ANDROID_SDK_ROOT", raising=False)
    tfl, pte = device_artifacts(quick_run)
    with pytest.raises(DeviceError, match="adb not found"):
        bench_device([tfl], tflite_benchmark=str(binaries["benchmark_model"]), progress=False)
    with pytest.raises(DeviceError, match="needs executor_runner built for the device: pass its path with --executorch-runner"):
        bench_device([tfl, pte], tflite_benchmark=str(binaries["benchmark_model"]), progress=False)
    with pytest.raises(DeviceError, match="--tflite-benchmark .*nope.* is not a file"):
        bench_device([tfl], tflite_benchmark=str(tmp_path / "nope"), progress=False)
    package = quick_run / "sep_aspp" / "artifacts" / "quick_sep_aspp_ptq_coreml_int8.mlpackage"
    with pytest.raises(DeviceError, match="Core ML runs on iPhones"):
        bench_device([package], progress=False)
    assert main(["bench-device", str(tfl)]) == 2
    assert "needs --adb" in capsys.readouterr().err
    assert os.environ["PATH"] == str(tmp_path / "empty")
