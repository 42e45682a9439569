"""The float reference on CUDA (skipped without a GPU): same logits as on the CPU, and int8
artifacts measured against it as against the CPU reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aspp_edge.checkpoint import load_model
from aspp_edge.data import build_dataset
from aspp_edge.evaluate.accuracy import evaluate, float_reference
from aspp_edge.metrics import logits_sqnr_db

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def references(quick_trained, quick_recipe):
    model, _, _ = load_model(quick_trained.checkpoint, quick_recipe)
    val = build_dataset(quick_recipe, "val")
    return val, float_reference(model, val, device="cuda"), float_reference(model, val, device="cpu")


def test_cuda_float_logits_match_cpu(references):
    _, cuda, cpu = references
    assert cuda.device == "cuda" and cpu.device == "cpu"
    # cuDNN may use TF32 for convolutions: close, not bit-equal
    assert logits_sqnr_db(cuda.logits, cpu.logits) >= 40.0
    assert (cuda.logits.argmax(1) == cpu.logits.argmax(1)).mean() >= 0.999
    assert abs(cuda.miou - cpu.miou) <= 2e-3


def test_int8_artifact_against_the_cuda_reference(references, quick_trained, quick_recipe, quick_calib, tmp_path):
    pytest.importorskip("litert_torch", reason="exporting the int8 artifact needs litert-torch")
    from aspp_edge import runtime
    from aspp_edge.export import export, from_checkpoint, from_quantized
    from aspp_edge.quantize import quantize

    val, cuda, cpu = references
    source = from_checkpoint(quick_trained.checkpoint, quick_recipe)
    q = quantize(source.model, quick_recipe.ptq, calibration=quick_calib)
    q.meta = {"recipe": quick_recipe.to_dict(), "source_checkpoint_sha256": source.checkpoint_sha256}
    source = from_quantized(q.save(tmp_path, "quick_ptq"), source)
    runner = runtime.load(export(source, "tflite", "int8", tmp_path))
    on_cuda, on_cpu = evaluate(runner, val, cuda), evaluate(runner, val, cpu)
    # the floors of the quick run's int8 artifacts (tests/test_pipeline.py: agreement 0.985, below the
    # spread over train seeds; drop 0.5 points, from train seeds 0-4), measured on the CPU reference,
    # which the CUDA one matches on >= 0.999 of pixels (test above). This PTQ calibrates on 32 images, the run on
    # 64: the 32-image PyTorch program dropped 0.07-0.34 points on seeds 0-4 (CPU). UNVERIFIED: no
    # GPU was lent to the session that set these floors or to any since (2026-12-03); the first
    # session with a GPU runs this file and writes the measured figures here.
    assert on_cuda.agreement >= 0.985 and on_cuda.miou_drop <= 0.5, (on_cuda.agreement, on_cuda.miou_drop)
    assert abs(on_cuda.agreement - on_cpu.agreement) <= 0.002 and np.isclose(on_cuda.miou, on_cpu.miou)
