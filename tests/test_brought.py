"""Models people bring (issue 16): torchvision:NAME, smp:ARCH and module.path:callable through
training, PTQ/QAT, all three exports (loaded back in their runtimes), manifests and the report.

Setup of the export tests (`test_brought_model_to_every_backend`; the factory in `make test`, the
other three in the full tier): torchvision LR-ASPP and DeepLabV3 (MobileNetV3-Large), SMP DeepLabV3+
(MobileNetV2 encoder) and a factory written here, each trained on the quick recipe's synthetic data
at BROUGHT_SIZE x BROUGHT_SIZE (6 classes, AdamW, lr 0.01; BROUGHT_EPOCHS epochs on TRAIN_SIZE
scenes, SMP SMP_EPOCHS on SMP_TRAIN_SIZE), then PTQ'd (minmax, on the calibration images) and QAT'd
(QAT_STEPS steps), each program exported to ExecuTorch, TFLite and Core ML and loaded back; on
VAL_IMAGES val images every int8 artifact must agree with the float model on >= 99% of pixels and
reach its model's logits SQNR floor (INT8_SQNR_DB: measured values less 3 dB). So briefly trained,
the torchvision models and the factory predict only background (class 0 on every pixel; training
them until they predict several classes costs 5-10 minutes a test, the slow test below), so their
agreement is 1.0 by construction and the SQNR floor is their check; SMP's model predicts four
classes (asserted: >= MIN_CLASSES), so its agreement is read on several. The slow test (`-m slow`)
trains the quick recipe as it is (8 epochs, 512 scenes at 64x64) and holds every method x backend x
precision to the agreement floors, fp32 exports included (torchvision DeepLabV3 still predicts only
background there: its int8 artifacts are held to the SQNR floor as well).

Cost: the int8 lowerings dominate (ExecuTorch's XNNPACK lowering of a MobileNetV3-Large graph takes
30-40 s on one core of the 2-core CPU machine, litert-torch 20-25 s, Core ML about 10 s), not the
input size, which is why these tests train and evaluate at 32x32.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

from aspp_edge.cli import main
from aspp_edge.config import Recipe, load_recipe
from aspp_edge.errors import CheckpointError, ConfigError
from aspp_edge.formats.manifest import read_manifest, validate_manifest
from aspp_edge.models import BroughtModel, build_brought, model_from_recipe
from aspp_edge.models.brought import parse_spec, to_logits

HERE = __name__  # importable as a module path: the factories below are `tests.test_brought:NAME`
FACTORY = f"{HERE}:tiny_segmenter"
NUM_CLASSES = 6  # the quick recipe's synthetic data
BROUGHT_EPOCHS, TRAIN_SIZE, VAL_IMAGES, BROUGHT_SIZE, QAT_STEPS = 2, 128, 16, 32, 4
# SMP's DeepLabV3+ learns in minutes here: 4 epochs on 512 scenes take it past background-only
# (val mIoU 0.18 against 0.128 for all-background; four classes in its argmax), so its agreement
# check sees several classes. The torchvision MobileNetV3-Large models still predict only background
# after that (at 64x64 too).
SMP_EPOCHS, SMP_TRAIN_SIZE = 4, 512
# int8 artifact vs the float model (argmax agreement over VAL_IMAGES val images). The issue asks
# >= 0.99 where the model is trained enough to have confident pixels (see the module docstring).
INT8_AGREEMENT = 0.99
# Logits SQNR floor of each int8 artifact vs the float model, per model: the lowest of its six measured
# values (PTQ and QAT x ExecuTorch, TFLite, Core ML; make test-full on the 2-core machine, 2026-12-03)
# less 3 dB. Measured: torchvision LR-ASPP 48.5-48.9 dB, torchvision DeepLabV3 46.3-47.9, SMP
# DeepLabV3+ 34.3-35.3, the factory 40.5-41.1. Where the float model predicts only background (all
# but SMP here), agreement is 1.0 by construction and this floor is the check that can fail.
INT8_SQNR_DB = {"torchvision-lraspp_mobilenet_v3_large": 45.0, "torchvision-deeplabv3_mobilenet_v3_large": 43.0,
                "smp-DeepLabV3Plus": 31.0, "tests.test_brought-tiny_segmenter": 37.0}
FP32_AGREEMENT = 0.999
MIN_CLASSES = 3  # of the 6: a float model predicting fewer is too close to background-only for agreement to mean much


# -- factories the `module.path:callable` form imports ----------------------------------------------
class TinySeg(nn.Module):
    """A small stride-4 net that returns {"out": low-resolution logits, "aux": ...}, as torchvision's do."""

    def __init__(self, num_classes: int, width: int = 8, act: str = "relu") -> None:
        super().__init__()
        a = {"relu": nn.ReLU, "hardswish": nn.Hardswish}[act]
        self.body = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), a()),
            nn.Sequential(nn.Conv2d(width, width, 3, 2, 1, groups=width, bias=False), nn.BatchNorm2d(width), a()),
            nn.Sequential(nn.Conv2d(width, 2 * width, 1, bias=False), nn.BatchNorm2d(2 * width), a()),
        )
        self.classifier = nn.Conv2d(2 * width, num_classes, 1)

    def forward(self, x):
        logits = self.classifier(self.body(x))
        return {"out": logits, "aux": logits.detach()}


def tiny_segmenter(num_classes: int, width: int = 8, act: str = "relu") -> nn.Module:
    return TinySeg(num_classes, width, act)


def constant_segmenter(num_classes: int) -> nn.Module:
    """Class 0 on every pixel whatever the image: the classifier's weights are zero, its bias favours 0."""
    model = TinySeg(num_classes)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.arange(num_classes, 0, -1, dtype=torch.float32))
    return model


def tuple_segmenter(num_classes: int) -> nn.Module:
    class TupleOut(TinySeg):
        def forward(self, x):
            return self.classifier(self.body(x)), torch.zeros(1)

    return TupleOut(num_classes)


def three_class_segmenter() -> nn.Module:  # no num_classes parameter: always 3 classes
    return TinySeg(3)


def classifier_factory(num_classes: int) -> nn.Module:  # logits N x C: not a segmentation model
    return nn.Sequential(nn.Conv2d(3, num_classes, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def not_a_module(num_classes: int):
    return 42


# -- the spec, the adapter and bad input ------------------------------------------------------------
def test_spec_forms():
    assert parse_spec("torchvision:lraspp_mobilenet_v3_large").kind == "torchvision"
    assert parse_spec("smp:DeepLabV3Plus").kind == "smp"
    spec = parse_spec(f"{HERE}:tiny_segmenter")
    assert (spec.kind, spec.module, spec.name) == ("module", HERE, "tiny_segmenter")


def test_adapter_upsamples_and_unwraps():
    low = torch.randn(2, NUM_CLASSES, 16, 16)
    want = nn.functional.interpolate(low, size=(64, 64), mode="bilinear", align_corners=False)
    for out in (low, {"out": low, "aux": low * 0}, {"logits": low}, (low, "labels"), [low]):
        torch.testing.assert_close(to_logits(out, (64, 64), NUM_CLASSES, "m"), want)
    assert to_logits(want, (64, 64), NUM_CLASSES, "m") is want  # already at the input size: untouched
    with pytest.raises(ConfigError, match=r"returns a tensor of shape 2x6 \(rank 2\); expected logits N x 6 x H x W"):
        to_logits(torch.zeros(2, 6), (64, 64), NUM_CLASSES, "m")
    with pytest.raises(ConfigError, match=r"dict with keys \['a', 'b'\]"):
        to_logits({"a": low, "b": low}, (64, 64), NUM_CLASSES, "m")


def test_tuple_output_and_factory_model_adapted():
    m = build_brought(f"{HERE}:tuple_segmenter", num_classes=NUM_CLASSES, input_size=64).eval()
    assert isinstance(m, BroughtModel)
    assert m(torch.zeros(2, 3, 64, 64)).shape == (2, NUM_CLASSES, 64, 64)


def _cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("spec, args, match", [
    ("hub:foo", [], r"unknown model source prefix 'hub:' in 'hub:foo'; valid forms: torchvision:NAME, smp:ARCH, module.path:callable"),
    ("torchvision:resnet18", [], r"unknown torchvision segmentation builder 'resnet18'; valid choices: deeplabv3_mobilenet_v3_large, .*lraspp_mobilenet_v3_large"),
    ("no_such_pkg.models:build", [], r"cannot import module 'no_such_pkg.models' .*ModuleNotFoundError"),
    (f"{HERE}:no_such_factory", [], rf"module '{HERE}' has no 'no_such_factory'; its callables: .*tiny_segmenter"),
    (f"{HERE}:not_a_module", [], rf"model source '{HERE}:not_a_module' returned int, not a torch.nn.Module"),
    (f"{HERE}:three_class_segmenter", [], r"returns logits of shape 1x3x16x16: 3 classes; expected 6"),
    (f"{HERE}:classifier_factory", [], r"returns a tensor of shape 1x6 \(rank 2\); expected logits N x 6 x H x W"),
    (f"{HERE}:tiny_segmenter", ["--model-arg", "depth=3"], r"failed to build: TypeError: .*depth"),
    ("torchvision:lraspp_mobilenet_v3_large", ["--model-arg", "weights_backbone=IMAGENET1K_V1"], r"model.args 'weights_backbone' is set by aspp-edge"),
    ("smp:DeepLabV3Plus", ["--model-arg", "encoder_weights=imagenet"], r"encoder_weights 'imagenet' would be downloaded"),
    ("smp:DeepLabv3plus", [], r"unknown smp architecture 'DeepLabv3plus'; valid choices: .*DeepLabV3Plus"),
])
def test_bad_model_specs_are_one_line_and_write_nothing(spec, args, match, capsys, tmp_path):
    out = tmp_path / "out"
    for command in (["train", "--recipe", "quick", "--out", str(out)], ["run", "--recipe", "quick", "--out", str(out)]):
        err = _cli_error(capsys, [*command, "--model", spec, *args])
        assert err.startswith("aspp-edge: error: ")
        import re

        assert re.search(match, err), err
        assert not out.exists()


def test_smp_without_the_extra_names_the_pip_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)  # import raises ImportError
    err = _cli_error(capsys, ["train", "--recipe", "quick", "--out", str(tmp_path / "o"), "--model", "smp:DeepLabV3Plus"])
    assert "pip install 'aspp-edge[smp]'" in err
    assert not (tmp_path / "o").exists()


def test_weights_load_and_mismatched_keys_are_named(tmp_path, capsys):
    torch.manual_seed(0)
    raw = tiny_segmenter(NUM_CLASSES)
    good = tmp_path / "good.pt"
    torch.save(raw.state_dict(), good)
    m = build_brought(f"{HERE}:tiny_segmenter", num_classes=NUM_CLASSES, input_size=64, weights=good).eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(m(x), to_logits(raw.eval()(x), (64, 64), NUM_CLASSES, "raw"))
    bad = tmp_path / "bad.pt"
    state = raw.state_dict()
    state["extra.weight"] = state.pop("classifier.weight")
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match=r"1 missing keys \(first 'classifier.weight'\); 1 unexpected keys \(first 'extra.weight'\)"):
        build_brought(f"{HERE}:tiny_segmenter", num_classes=NUM_CLASSES, input_size=64, weights=bad)
    err = _cli_error(capsys, ["train", "--recipe", "quick", "--out", str(tmp_path / "o"), "--model", f"{HERE}:tiny_segmenter",
                              "--weights", str(bad)])
    assert "missing keys (first 'classifier.weight')" in err and not (tmp_path / "o").exists()


def test_epochs_zero_keeps_the_given_weights(tmp_path):
    from aspp_edge.checkpoint import load_model

    torch.manual_seed(0)
    raw = tiny_segmenter(NUM_CLASSES).eval()
    torch.save(raw.state_dict(), tmp_path / "w.pt")
    recipe = _recipe_file(tmp_path, {"source": FACTORY, "weights": str(tmp_path / "w.pt")}, train={"epochs": 0})
    assert main(["train", "--recipe", recipe, "--out", str(tmp_path / "t")]) == 0
    model, _, ckpt = load_model(tmp_path / "t" / "float.pt")
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(model(x), to_logits(raw(x), (64, 64), NUM_CLASSES, "raw"))
    assert 0 <= ckpt["val_miou"] <= 1 and ckpt["history"] == []


def test_recipe_model_section_round_trips_and_rejects_strays():
    r = load_recipe("quick").replace(model={"source": "smp:DeepLabV3Plus", "args": {"encoder_name": "mobilenet_v2", "encoder_weights": None}})
    assert Recipe.from_dict(json.loads(r.to_json())) == r
    with pytest.raises(ConfigError, match="model.args, model.weights and model.rehead belong to a brought model"):
        load_recipe("quick").replace(model={"args": {"x": 1}})
    with pytest.raises(ConfigError, match="recipe key 'model.args' must be a mapping"):
        load_recipe("quick").replace(model={"source": "smp:Unet", "args": [1]})


@pytest.mark.parametrize("observer", ["mse", *(pytest.param(o, marks=pytest.mark.slow) for o in ("minmax", "ema", "percentile"))])
def test_every_observer_quantizes_a_brought_model(observer):
    from aspp_edge.config import PTQConfig
    from aspp_edge.metrics import logits_sqnr_db
    from aspp_edge.quantize import quantize

    torch.manual_seed(0)
    model = build_brought(FACTORY, {"width": 8}, num_classes=NUM_CLASSES, input_size=64).eval()
    batches = [torch.randn(8, 3, 64, 64) for _ in range(2)]
    converted = quantize(model, PTQConfig(observer=observer, calib_size=16), calibration=batches).convert()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        assert logits_sqnr_db(converted(x), model(x)) > 15.0


def test_cle_on_brought_models(capsys):
    from aspp_edge.calibration.equalize import NO_CHAINS, EqualizeReport, equalize

    torch.manual_seed(0)
    relu = build_brought(f"{HERE}:tiny_segmenter", num_classes=NUM_CLASSES, input_size=64).eval()
    report = EqualizeReport()
    eq = equalize(relu, report)
    assert report.pairs == 2 and not report.note  # (stride-2 conv -> depthwise), (depthwise -> pointwise)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(eq(x), relu(x), atol=1e-4, rtol=1e-4)  # ReLU chains: the same function
    hswish = build_brought(f"{HERE}:tiny_segmenter", {"act": "hardswish"}, num_classes=NUM_CLASSES, input_size=64).eval()
    report = EqualizeReport()
    equalize(hswish, report)
    assert (report.pairs, report.note) == (0, NO_CHAINS)
    assert NO_CHAINS in capsys.readouterr().err


def test_run_plans_heads_and_brought_models_side_by_side():
    from aspp_edge.cli import _model_entries, parse_args
    from aspp_edge.models import ModelEntry
    from aspp_edge.pipeline import plan_models

    quick = load_recipe("quick")
    argv = ["run", "--recipe", "quick", "--heads", "sep_aspp,lraspp", "--model", f"{FACTORY},{HERE}:tuple_segmenter",
            "--model", "{source: " + FACTORY + ", args: {width: 4}}"]
    args = parse_args(argv)
    with pytest.raises(ConfigError, match="'tests.test_brought-tiny_segmenter' is asked for twice"):
        plan_models(quick, args.heads, _model_entries(args))
    entries = plan_models(quick, "sep_aspp,lraspp", [FACTORY, {"source": f"{HERE}:tuple_segmenter", "args": {}}])
    assert [k for k, _ in entries] == ["sep_aspp", "lraspp", "tests.test_brought-tiny_segmenter", "tests.test_brought-tuple_segmenter"]
    assert [r.model.source for _, r in entries] == [None, None, FACTORY, f"{HERE}:tuple_segmenter"]
    assert all(r.data == quick.data and r.ptq == quick.ptq and r.qat == quick.qat for _, r in entries)  # same data, same scheme
    assert [k for k, _ in plan_models(quick, None, None)] == ["sep_aspp"]
    with pytest.raises(ConfigError, match="--model-arg and --weights apply to exactly one --model; got 2"):
        _model_entries(parse_args(["run", "--model", f"{FACTORY},{FACTORY}", "--model-arg", "width=4"]))
    one = _model_entries(parse_args(["run", "--model", FACTORY, "--model-arg", "width=4", "--model-arg", "act=hardswish"]))
    assert one == [ModelEntry(source=FACTORY, args={"width": 4, "act": "hardswish"})]


# -- every stage on the brought models --------------------------------------------------------------
BROUGHT = [
    pytest.param("torchvision:lraspp_mobilenet_v3_large", {}, id="tv-lraspp"),
    pytest.param("torchvision:deeplabv3_mobilenet_v3_large", {}, id="tv-deeplabv3"),
    pytest.param("smp:DeepLabV3Plus", {"encoder_name": "mobilenet_v2", "decoder_channels": 32}, id="smp-deeplabv3plus"),
    pytest.param(f"{HERE}:tiny_segmenter", {"width": 16}, id="factory"),
]
class Brought:
    """Per spec, on first use: the float model trained on the quick data and its int8 programs.
    `full=False`: TRAIN_SIZE scenes at BROUGHT_SIZE, BROUGHT_EPOCHS epochs, QAT_STEPS QAT steps
    (make test); True: the quick recipe as it is (512 scenes at 64x64, 8 epochs; the slow test)."""

    def __init__(self, root, full: bool = False) -> None:
        self.root, self.full, self._ckpt, self._ptq = root, full, {}, {}

    def recipe(self, source: str, args: dict) -> Recipe:
        quick = load_recipe("quick").replace(model={"source": source, "args": args})
        if self.full:
            return quick
        smp = source.startswith("smp:")
        return quick.replace(data={"train_size": SMP_TRAIN_SIZE if smp else TRAIN_SIZE, "resolution": BROUGHT_SIZE},
                             train={"epochs": SMP_EPOCHS if smp else BROUGHT_EPOCHS}, qat={"steps": QAT_STEPS})

    def checkpoint(self, source: str, args: dict):
        from aspp_edge.train import train

        if source not in self._ckpt:
            self._ckpt[source] = train(self.recipe(source, args), self.root / _key(source) / "float", progress=False)
        return self._ckpt[source].checkpoint

    def program(self, source: str, args: dict, method: str = "ptq"):
        from aspp_edge.quantize.job import quantize_checkpoint

        if (source, method) not in self._ptq:
            self._ptq[source, method] = quantize_checkpoint(self.recipe(source, args), self.checkpoint(source, args), method,
                                                            self.root / _key(source) / "quant", name=f"{_key(source)}_{method}",
                                                            progress=False)
        return self._ptq[source, method]


def _key(source: str) -> str:
    from aspp_edge.models.brought import slug

    return slug(source)


@pytest.fixture(scope="session")
def brought(tmp_path_factory):
    return Brought(tmp_path_factory.mktemp("brought"))


@pytest.fixture(scope="session")
def brought_trained(tmp_path_factory):
    return Brought(tmp_path_factory.mktemp("brought-trained"), full=True)


def _val(recipe: Recipe) -> torch.Tensor:
    from aspp_edge.data import build_dataset

    val = build_dataset(recipe, "val")
    return torch.stack([val[i][0] for i in range(VAL_IMAGES)])


def _exports(brought, source, args, method, backends, tmp_path, *, fp32=False):
    """Export the program (and the float model) to `backends`, load each back, and return
    {(backend, precision): (agreement with the float model, manifest)}."""
    from aspp_edge import runtime
    from aspp_edge.export import export, from_checkpoint, from_quantized

    recipe = brought.recipe(source, args)
    result = brought.program(source, args, method)
    src = from_quantized(result.program, from_checkpoint(brought.checkpoint(source, args), recipe))
    images = _val(recipe)
    from aspp_edge.metrics import logits_sqnr_db

    with torch.no_grad():
        ref_logits = src.model(images).numpy()
    ref = ref_logits.argmax(1)
    out = {}
    for backend in backends:
        for precision in (["int8"] + (["fp16" if backend == "coreml" else "fp32"] if fp32 else [])):
            artifact = export(src, backend, precision, tmp_path)
            runner = runtime.load(artifact)
            logits = runner.predict(images.numpy())
            size = recipe.data.resolution
            assert logits.shape == (VAL_IMAGES, NUM_CLASSES, size, size)
            manifest = read_manifest(artifact)
            out[backend, precision] = (float((logits.argmax(1) == ref).mean()), manifest, artifact, runner.evaluated_by,
                                       logits_sqnr_db(logits, ref_logits))
    return out, result


def _float_classes(brought, source, args) -> list[int]:
    """The classes the float model predicts on the VAL_IMAGES val images (each on >= 0.5% of pixels)."""
    from aspp_edge.checkpoint import load_model

    recipe = brought.recipe(source, args)
    model = load_model(brought.checkpoint(source, args), recipe)[0].eval()
    with torch.no_grad():
        pred = model(_val(recipe)).argmax(1)
    counts = torch.bincount(pred.flatten(), minlength=NUM_CLASSES)
    return [c for c in range(NUM_CLASSES) if counts[c] >= 0.005 * pred.numel()]


def _check_manifest(manifest, source, args):
    validate_manifest(manifest)
    model = manifest["model"]
    assert model["source"] == source and model["args"] == args and model["num_classes"] == NUM_CLASSES
    assert model["params"] > 0 and model["gmacs"] > 0
    assert "head" not in model and "backbone" not in model  # never a built-in head it is not


BACKENDS = ("executorch", "tflite", "coreml")


def _brought_tier(source: str, method: str):
    """make test: the factory model's PTQ to every backend; the full tier: its QAT (~90 s) and the three
    others' PTQ (their MobileNetV3-Large / MobileNetV2 lowerings: 1.5-4 minutes a test, up to 7 on a slow
    machine); the torchvision/SMP QAT cases (4-7 minutes each on a slow 2-core machine) only with -m slow."""
    if (source, method) == ("factory", "ptq"):
        return ()
    return pytest.mark.full if method == "ptq" or source == "factory" else pytest.mark.slow


@pytest.mark.parametrize("source, args, method", [
    pytest.param(*p.values, m, marks=_brought_tier(p.id, m), id=f"{p.id}-{m}") for p in BROUGHT for m in ("ptq", "qat")])
def test_brought_model_to_every_backend(source, args, method, brought, tmp_path):
    results, q = _exports(brought, source, args, method, BACKENDS, tmp_path)
    classes = _float_classes(brought, source, args)
    print(f"{source} {method}: float mIoU {q.float_miou:.4f}, float argmax classes {classes}, program agreement "
          f"{q.agreement:.4f}, SQNR {q.sqnr_db:.1f} dB; "
          + ", ".join(f"{b} {a:.4f} {db:.1f} dB" for (b, _), (a, _m, _a, _by, db) in results.items()))
    assert set(results) == {(b, "int8") for b in BACKENDS}
    if source.startswith("smp:"):  # the one that learns here: its agreement is read on several classes
        assert len(classes) >= MIN_CLASSES, f"SMP's float model predicts only classes {classes}: the agreement check says little"
    informative = len(classes) >= MIN_CLASSES  # agreement with a (nearly) one-class float model is no evidence
    assert (q.accuracy_note is None) or not informative, q.accuracy_note
    for (backend, precision), (agreement, manifest, artifact, by, db) in results.items():
        _check_manifest(manifest, source, args)
        assert manifest["method"] == method
        if informative:
            assert agreement >= INT8_AGREEMENT, f"{source} {backend} int8 ({by}): agreement {agreement:.4f} (float mIoU {q.float_miou:.3f})"
        floor = INT8_SQNR_DB[_key(source)]
        assert db >= floor, f"{source} {backend} int8 ({by}): logits SQNR {db:.1f} dB < {floor} dB"
        if backend == "tflite" and source.startswith("torchvision:"):
            # the MobileNetV3 int8 scheme on a model we did not write: integer end to end, one XNNPACK partition
            from aspp_edge.runtime.litert import xnnpack_delegation

            assert manifest["backend_info"]["qdq_inside"] == [], manifest["backend_info"]["qdq_inside"]
            xnnpack = xnnpack_delegation(artifact)
            assert (xnnpack["partitions"], xnnpack["ops_outside"]) == (1, {}), xnnpack
        if backend == "executorch" and source.startswith("torchvision:"):
            info = manifest["backend_info"]
            assert info["node_fraction"] == 1.0 and info["undelegated_ops"] == {}, info["undelegated_ops"]


@pytest.mark.slow  # 5-10 minutes a test on the 2-core machine: neither tier
@pytest.mark.parametrize("method", ["ptq", "qat"])
@pytest.mark.parametrize("source, args", BROUGHT)
def test_trained_brought_model_every_method_every_backend(source, args, method, brought_trained, tmp_path):
    """The quick recipe as it is (8 epochs on 512 scenes): models with confident pixels of several classes."""
    results, q = _exports(brought_trained, source, args, method, BACKENDS, tmp_path, fp32=method == "ptq")
    classes = _float_classes(brought_trained, source, args)
    print(f"{source} {method}: float mIoU {q.float_miou:.4f}, float argmax classes {classes}; "
          + ", ".join(f"{b} {p} {a:.4f} {db:.1f} dB" for (b, p), (a, _m, _a, _by, db) in results.items()))
    for (backend, precision), (agreement, manifest, _, by, db) in results.items():
        _check_manifest(manifest, source, args)
        floor = INT8_AGREEMENT if precision == "int8" else FP32_AGREEMENT if precision == "fp32" else 0.995
        if len(classes) >= MIN_CLASSES:
            assert agreement >= floor, f"{source} {backend} {precision} ({by}): agreement {agreement:.4f}"
        elif precision == "int8":  # background only (torchvision DeepLabV3 here): agreement says nothing, SQNR is the check
            assert db >= INT8_SQNR_DB[_key(source)], f"{source} {backend} int8 ({by}): logits SQNR {db:.1f} dB"


# -- the run: report, manifests, demo and the apps name the brought model ---------------------------


def _recipe_file(tmp_path, model: dict, **sections) -> str:
    import yaml

    sections = {"data": {"train_size": 64, "val_size": 16}, "train": {"epochs": 1}, "ptq": {"calib_size": 16}, **sections}
    base = load_recipe("quick").replace(model=model, **sections)
    path = tmp_path / "byom.yaml"
    path.write_text(yaml.safe_dump(base.to_dict()))
    return str(path)


def test_run_with_a_factory_model_names_it_everywhere(tmp_path, capsys):
    from aspp_edge.apps import install_for_apps
    from aspp_edge.demo import run_demo
    from aspp_edge.models.brought import slug

    recipe = _recipe_file(tmp_path, {"source": FACTORY, "args": {"width": 8}})
    out = tmp_path / "run"
    assert main(["run", "--recipe", recipe, "--backends", "tflite", "--methods", "ptq", "--runs", "2", "--no-peaks",
                 "--out", str(out)]) == 0
    key = slug(FACTORY)
    report = json.loads((out / "report.json").read_text())
    ref = report["references"][key]
    assert ref["model"]["source"] == FACTORY and ref["model"]["args"] == {"width": 8} and ref["params"] == ref["model"]["params"]
    rows = report["artifacts"]
    assert {r["head"] for r in rows} == {key} and len(rows) == 2
    assert all(r["agreement"] is not None for r in rows)
    assert f"`{key}`: {FACTORY}(width=8)" in (out / "report.md").read_text()
    int8 = next(out / r["path"] for r in rows if r["backend"] == "tflite" and r["precision"] == "int8")
    _check_manifest(read_manifest(int8), FACTORY, {"width": 8})
    seg, _ = run_demo(int8, _sample_png(tmp_path, recipe), tmp_path / "overlay.png", runs=1)
    assert seg.mask.shape == (64, 64)
    apps = tmp_path / "apps"
    (apps / "android").mkdir(parents=True)
    (apps / "ios").mkdir()
    index = install_for_apps([int8], apps, Recipe.from_dict(report["recipe"]))
    assert index["artifacts"]["tflite"]["source_artifact"] == int8.name


@pytest.mark.parametrize("spec, epochs", [
    pytest.param(f"{HERE}:constant_segmenter", 0, marks=pytest.mark.full, id="constant"),  # make test: the unit tests in test_evaluate
    # trained one epoch at 32x32 it predicts only background (as in the brought-model tests above)
    pytest.param("torchvision:lraspp_mobilenet_v3_large", 1, marks=pytest.mark.full, id="trained-background-only"),
])
def test_a_one_class_reference_is_called_uninformative_in_report_eval_and_manifest(spec, epochs, tmp_path, capsys):
    """A constant-output model and a trained background-only one: the report (its reference line, a
    note, the cells), the run's summary, `eval` and the manifests say that agreement and drop say
    nothing; SQNR stays a figure."""
    from aspp_edge.evaluate.report import UNINFORMATIVE
    from aspp_edge.models.brought import slug

    recipe = _recipe_file(tmp_path, {"source": spec}, train={"epochs": epochs}, data={"train_size": 64, "val_size": 16,
                                                                                        "resolution": BROUGHT_SIZE})
    out = tmp_path / "run"
    assert main(["run", "--recipe", recipe, "--backends", "tflite", "--methods", "ptq", "--runs", "2", "--no-peaks",
                 "--out", str(out)]) == 0
    summary = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    ref = report["references"][slug(spec)]
    assert (ref["predicted_classes"], ref["majority_class"], ref["majority_share"]) == (1, "background", 1.0)
    assert "predicts one class (background) on every val pixel" in ref["note"]
    assert f"note: {slug(spec)}: {ref['note']}." in summary
    md = (out / "report.md").read_text()
    assert "Agreement and mIoU drop are uninformative" in md and ref["note"] in md
    for row in report["artifacts"]:
        assert row["agreement"] == 1.0 and row["minority_agreement"] is None and row["accuracy_note"] == ref["note"]
        assert read_manifest(out / row["path"])["metrics"]["accuracy_note"] == ref["note"]
        line = next(x for x in md.splitlines() if x.startswith(f"| {row['backend']} {row['precision']}"))
        assert f"| 1.0000 {UNINFORMATIVE} |" in line and f"{row['sqnr_db']:.1f}" in line
    int8 = next(out / r["path"] for r in report["artifacts"] if r["precision"] == "int8")
    assert main(["eval", str(int8)]) == 0
    printed = capsys.readouterr().out
    assert "predicts 1 of 6 classes" in printed and f"* uninformative: {ref['note']}." in printed


def _sample_png(tmp_path, recipe_path: str):
    from PIL import Image

    from aspp_edge.apps import sample_image

    path = tmp_path / "sample.png"
    Image.fromarray(sample_image(load_recipe(recipe_path))).save(path)
    return path


@pytest.mark.slow
def test_side_by_side_run_with_our_heads(tmp_path):
    recipe = _recipe_file(tmp_path, {"head": "sep_aspp"})
    out = tmp_path / "run"
    assert main(["run", "--recipe", recipe, "--heads", "sep_aspp,lraspp", "--model", "torchvision:lraspp_mobilenet_v3_large",
                 "--backends", "executorch,tflite", "--methods", "ptq", "--runs", "2", "--no-peaks", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["references"]) == ["sep_aspp", "lraspp", "torchvision-lraspp_mobilenet_v3_large"]
    assert {r["head"] for r in report["artifacts"]} == set(report["references"])
    assert "torchvision:lraspp_mobilenet_v3_large()" in (out / "report.md").read_text()
