"""A backend is one registry entry plus its writer and runner. A toy backend defined in this file
only (a writer that saves a `torch.export` program, a runner that loads it back) is exported,
timed in a fresh process, reported, swept, inspected and evaluated by the library as it is, and a
run (full tier) evaluates and reports it beside the others."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from aspp_edge.errors import AsppEdgeError
from aspp_edge.export.common import Written, io_specs
from aspp_edge.formats import BACKENDS, Backend
from aspp_edge.formats.backends import PLUGINS_ENV, load_plugins
from aspp_edge.runtime.base import Runner

TOY = "toy-ep"


def write(module, source, precision: str, tmp: Path, *, layout: str, io_dtype: str) -> Written:
    program = torch.export.export(module, (source.example,))
    torch.export.save(program, str(tmp))
    return Written({"nodes": len(program.graph.nodes)}, *io_specs(source, "NCHW"))


def check(path) -> None:
    if not zipfile.is_zipfile(path):
        raise AsppEdgeError(f"{str(path)!r} is not a torch.export archive")


class ToyRunner(Runner):
    runtime = "torch.export"

    def __init__(self, path, *, threads=None) -> None:
        super().__init__(path, threads=threads)
        import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401  (registers the Q/DQ ops an int8 program holds)

        self.module = torch.export.load(str(self.path)).module()

    @property
    def version(self) -> str:
        return torch.__version__

    def _run(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.module(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def summary(path) -> dict:
    import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401

    program = torch.export.load(str(path))
    return {"nodes": len(program.graph.nodes), "inputs": [list(s.shape) for s in program.example_inputs[0]]}


def graph_facts(path, info) -> dict:
    return {"nodes": info["nodes"]}


TOY_BACKEND = Backend(TOY, "ep", ("fp32", "int8"), "fp32", check, write, ToyRunner, checked_here="runtime", default=False,
                      reader=summary, graph=graph_facts, graph_text=lambda facts: f"{facts['nodes']} graph nodes", marker="x")


@pytest.fixture
def toy(monkeypatch):
    """The toy backend registered here and, through $ASPP_EDGE_BACKENDS, in every timing process."""
    monkeypatch.setitem(BACKENDS, TOY, TOY_BACKEND)
    monkeypatch.setenv(PLUGINS_ENV, f"{__name__}:TOY_BACKEND")
    return TOY_BACKEND


def test_toy_backend_is_swept_timed_reported_inspected_and_runs(toy, tmp_path):
    from aspp_edge import runtime
    from aspp_edge.export import from_quantized
    from aspp_edge.export.inspect import format_inspection, inspect_artifact
    from aspp_edge.pipeline import SweepConfig, sweep
    from aspp_edge.pipeline.latency import LatencyStages

    config = SweepConfig(models=("lraspp",), size=32, width=0.25, head_channels=16, backends=(TOY,), runs=2, warmup=0, threads=1,
                         peaks=False)
    result = sweep(config, tmp_path, progress=False)
    assert [(r["backend"], r["precision"]) for r in result.rows] == [(TOY, "fp32"), (TOY, "int8")]
    for r in result.rows:  # timed in a fresh process, which found the backend through $ASPP_EDGE_BACKENDS
        assert r["latency_ms"]["median"] > 0 and r["evaluated_by"] == f"torch.export {torch.__version__}"
        assert r["graph"]["nodes"] > 10
    md = (tmp_path / "sweep.md").read_text()
    assert f"| {TOY} fp32 ms | {TOY} int8 ms |" in md and f"graph nodes | torch.export {torch.__version__} |" in md
    assert f"`lraspp@mobilenet_v2`: {TOY} int8 runs in" in md
    assert json.loads((tmp_path / "sweep.json").read_text())["config"]["backends"] == [TOY]

    model = config.parsed_models()[0]
    artifacts = {p: tmp_path / r["path"] for p, r in zip(("fp32", "int8"), result.rows)}
    manifest = json.loads((artifacts["fp32"].parent / (artifacts["fp32"].name + ".manifest.json")).read_text())
    assert (manifest["backend"], manifest["format"], manifest["checked_here"]) == (TOY, "ep", "runtime")
    info = inspect_artifact(artifacts["int8"])
    assert info["format"] == "ep" and info["file"]["inputs"] == [[1, 3, 32, 32]] and info["manifest"]["backend"] == TOY
    assert "nodes" in format_inspection(info)

    # the runner gives the float model's and the int8 program's own logits
    float_model = LatencyStages(tmp_path, config.timing()).float_model(model)
    program = from_quantized(next((tmp_path / model.folder / "quant").glob("*_int8.pt2"))).program
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = {"fp32": float_model(x).numpy(), "int8": program(x).numpy()}
    for precision, path in artifacts.items():
        got = runtime.load(path).predict(x)
        assert got.shape == (2, 21, 32, 32)
        np.testing.assert_allclose(got, want[precision], atol=1e-4, err_msg=precision)


def test_plugins_env_registers_once_and_refuses_what_is_not_a_backend(monkeypatch):
    monkeypatch.setattr("aspp_edge.formats.backends.BACKENDS", dict(BACKENDS))
    monkeypatch.setenv(PLUGINS_ENV, f"{__name__}:TOY_BACKEND")
    assert load_plugins() == [TOY] and load_plugins() == []
    monkeypatch.setenv(PLUGINS_ENV, f"{__name__}:TOY")
    with pytest.raises(AsppEdgeError, match=f"{PLUGINS_ENV}: '{__name__}:TOY' is a str, not a Backend"):
        load_plugins()
    monkeypatch.setenv(PLUGINS_ENV, "no_such_module:X")
    with pytest.raises(AsppEdgeError, match="cannot import backend 'no_such_module:X'"):
        load_plugins()


def test_schema_files_list_the_registry_backends():
    """The JSON schemas on disk (read outside Python) name the built-in backends; validation reads the
    registry as it is, so a registered backend validates too."""
    from aspp_edge.evaluate.sweep_report import SCHEMA_PATH as SWEEP_SCHEMA
    from aspp_edge.formats.manifest import SCHEMA_PATH as MANIFEST_SCHEMA
    from aspp_edge.formats.manifest import schema

    built_in = {n for n in BACKENDS if n != TOY}
    manifest = json.loads(MANIFEST_SCHEMA.read_text())
    assert set(manifest["properties"]["backend"]["enum"]) == built_in
    assert set(manifest["properties"]["format"]["enum"]) == {BACKENDS[n].extension for n in built_in}
    assert manifest["properties"]["artifact"]["pattern"] == schema()["properties"]["artifact"]["pattern"]
    sweep = json.loads(SWEEP_SCHEMA.read_text())
    assert set(sweep["properties"]["config"]["properties"]["backends"]["items"]["enum"]) == built_in
    assert set(sweep["$defs"]["row"]["properties"]["backend"]["enum"]) == built_in


@pytest.mark.full  # export and evaluate two toy artifacts on a copy of the shared quick run: ~1 min
def test_run_evaluates_and_reports_a_registered_backend(toy, quick_run, tmp_path):
    import shutil

    from aspp_edge.config import load_recipe
    from aspp_edge.pipeline import run

    out = tmp_path / "run"
    shutil.copytree(quick_run, out)
    summary = run(load_recipe("quick"), out, methods="ptq", backends=TOY, runs=2, warmup=0, peaks=False, progress=False)
    rows = {r["precision"]: r for r in summary.rows}
    assert set(rows) == {"fp32", "int8"}
    assert rows["fp32"]["agreement"] == pytest.approx(1.0, abs=1e-3) and rows["fp32"]["sqnr_db"] > 60
    # the int8 program itself, run by torch: the quick model's floor for int8 against float, as for the
    # other backends (test_pipeline.INT8_MIN_AGREEMENT: below the 0.9879-0.9917 spread over seeds)
    assert rows["int8"]["agreement"] >= 0.985 and rows["int8"]["latency_ms"]["median"] > 0
    md = (out / "report.md").read_text()
    assert f"| {TOY} fp32 | " in md and f"| {TOY} int8 ptq | " in md
