"""Every head x output stride x decoder: shapes, gradients, torch.export; plus head specifics."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.segmentation.deeplabv3 import ASPP as TorchvisionASPP

from aspp_edge.errors import ConfigError
from aspp_edge.models import DECODERS, create_model, list_models
from aspp_edge.models.aspp import HDC_RATES, ASPP_RATES, aspp, sep_aspp
from aspp_edge.models.registry import Registry
from aspp_edge.models.stats import model_stats

from .conftest import TINY

HEADS = list_models()
COMBOS = [(h, os_, d) for h in HEADS for os_ in (8, 16) for d in DECODERS.names()]


def test_registry_lists_all_seven_heads():
    assert HEADS == sorted(["aspp", "aspp_nobn", "sep_aspp", "se_aspp", "sep_se_aspp", "hdc_aspp", "lraspp"])


@pytest.mark.parametrize("head,output_stride,decoder", COMBOS)
def test_forward_backward_export(head, output_stride, decoder):
    torch.manual_seed(0)
    model = create_model(head, output_stride=output_stride, decoder=decoder, **TINY)
    (x,) = model.example_inputs()
    assert x.shape == (1, 3, 64, 64)
    model.train()
    logits = model(x)  # batch size 1 in train mode: the image-pooling branch must cope
    assert logits.shape == (1, TINY["num_classes"], 64, 64)
    logits.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a finite gradient: {no_grad[:5]}"
    model.eval()
    ep = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "mobilenet_v3_large"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_backbone_taps_and_stride(backbone, output_stride):
    model = create_model("aspp", backbone=backbone, output_stride=output_stride, **TINY).eval()
    with torch.no_grad():
        feats = model.backbone(torch.zeros(2, 3, 64, 64))
    assert feats["low"].shape[-2:] == (16, 16)  # stride 4
    assert feats["mid"].shape[-2:] == (8, 8)  # stride 8
    assert feats["out"].shape[-2:] == (64 // output_stride,) * 2
    for name, t in feats.items():
        assert t.shape[1] == model.backbone.channels[name]


def _fold_bn(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return conv.weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale


@pytest.mark.parametrize("output_stride", [8, 16])
def test_aspp_matches_torchvision(output_stride):
    """Copy torchvision's ASPP weights into ours (folding the pooling branch's BN) and compare."""
    torch.manual_seed(0)
    cin, ch = 24, 16
    ref = TorchvisionASPP(cin, list(ASPP_RATES[output_stride]), ch)
    for m in ref.modules():  # non-trivial BN statistics, so a wrong mapping cannot pass
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    ref.eval()
    ours = aspp(cin, output_stride=output_stride, channels=ch).eval()
    with torch.no_grad():
        for i in range(4):  # 1x1 and three atrous branches: conv, BN
            ours.branches[i][0].weight.copy_(ref.convs[i][0].weight)
            ours.branches[i][1].load_state_dict(ref.convs[i][1].state_dict())
        w, b = _fold_bn(ref.convs[4][1], ref.convs[4][2])
        ours.branches[4].conv.weight.copy_(w)
        ours.branches[4].conv.bias.copy_(b)
        ours.project[0][0].weight.copy_(ref.project[0].weight)
        ours.project[0][1].load_state_dict(ref.project[1].state_dict())
        x = torch.randn(2, cin, 9, 11)
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_hdc_stacks_cover_the_aspp_reach_without_gridding(output_stride):
    for stack, rate in zip(HDC_RATES[output_stride], ASPP_RATES[output_stride]):
        reach = {0}
        for r in stack:
            reach = {o + d for o in reach for d in (-r, 0, r)}
        assert max(reach) == rate, f"stack {stack} reaches {max(reach)}, the ASPP branch reaches {rate}"
        assert reach == set(range(-rate, rate + 1)), f"stack {stack} leaves holes (gridding)"


def test_separable_head_counts_3_5x_fewer_macs():
    feats = torch.zeros(1, 320, 32, 32)  # MobileNetV2 OS16 features of a 512x512 image
    from aspp_edge.models.stats import count_macs

    dense = count_macs(aspp(320, output_stride=16), feats)
    separable = count_macs(sep_aspp(320, output_stride=16), feats)
    assert dense / separable >= 3.5, (dense, separable)
    # Cross-check the counter against the closed form for the dense head (per output pixel).
    per_pixel = 320 * 256 + 3 * 320 * 256 * 9 + 5 * 256 * 256
    assert dense == per_pixel * 32 * 32 + 320 * 256  # + the pooling branch's one pixel


def test_model_stats_of_full_model():
    s = model_stats(create_model("sep_aspp", num_classes=21), 512)
    assert 5.0e9 < s.macs < 6.0e9 and s.head_macs < s.macs and s.head_params < s.params


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(name="nope"), r"unknown head 'nope'; valid choices: aspp, aspp_nobn, hdc_aspp"),
        (dict(backbone="resnet50"), r"unknown backbone 'resnet50'; valid choices: mobilenet_v2, mobilenet_v3_large"),
        (dict(decoder="unet"), r"unknown decoder 'unet'; valid choices: deeplabv3, deeplabv3plus, lraspp"),
        (dict(output_stride=32), r"output_stride 32 is not supported; valid choices: 8, 16"),
        (dict(num_classes=1), r"num_classes 1 is not valid; it must be an integer >= 2"),
        (dict(input_size=16), r"too small for output stride 16"),
    ],
)
def test_bad_model_arguments(kwargs, match):
    args = {**TINY, "name": "aspp", **kwargs}
    with pytest.raises(ConfigError, match=match):
        create_model(args.pop("name"), **args)


def test_input_too_small_at_forward():
    model = create_model("aspp", output_stride=16, **TINY).eval()
    with pytest.raises(ValueError, match=r"input 24x64 is too small for output stride 16: .* at least 32"):
        model(torch.zeros(1, 3, 24, 64))


def test_registry_refuses_duplicates():
    reg = Registry("head")
    reg.register("x")(lambda: None)
    with pytest.raises(ValueError, match="head 'x' is already registered"):
        reg.register("x")(lambda: None)


@pytest.mark.parametrize("size", [(1, 1), (4, 4), (5, 7)])
def test_image_pooling_spread_equals_broadcast(size):
    """The bilinear 1x1 -> h x w spread (the form every backend lowers cleanly) is a broadcast."""
    from aspp_edge.models.aspp import ImagePooling

    torch.manual_seed(0)
    pool = ImagePooling(8, 6).eval()
    x = torch.randn(3, 8, *size)
    with torch.no_grad():
        vector = pool.act(pool.conv(x.mean((2, 3), keepdim=True)))
        spread = pool(x)
    assert spread.shape == (3, 6, *size)
    torch.testing.assert_close(spread, vector.expand(-1, -1, *size), rtol=0, atol=1e-6)


def test_one_model_grammar_for_every_command():
    """`models.parse_models` reads heads, head@backbone, 'all', brought specs and {source, args,
    weights} mappings (YAML text or dicts), comma-separated; run, sweep, train/quantize/export and
    the CLI all go through it."""
    from aspp_edge.cli import _model_entries, _recipe, parse_args
    from aspp_edge.config import load_recipe
    from aspp_edge.models import ModelEntry, list_heads, parse_models
    from aspp_edge.pipeline import SweepConfig, plan_models

    got = parse_models(["sep_aspp,lraspp@mobilenet_v3_large", "torchvision:lraspp_mobilenet_v3_large",
                        "{source: smp:Unet, args: {encoder_depth: 3}, weights: w.pt}", {"source": "torchvision:fcn_resnet50"}])
    assert got == [ModelEntry(head="sep_aspp"), ModelEntry(head="lraspp", backbone="mobilenet_v3_large"),
                   ModelEntry(source="torchvision:lraspp_mobilenet_v3_large"),
                   ModelEntry(source="smp:Unet", args={"encoder_depth": 3}, weights="w.pt"), ModelEntry(source="torchvision:fcn_resnet50")]
    assert [e.key("mobilenet_v2") for e in got[:3]] == ["sep_aspp@mobilenet_v2", "lraspp@mobilenet_v3_large",
                                                        "torchvision:lraspp_mobilenet_v3_large"]
    assert got[2].folder() == "torchvision-lraspp_mobilenet_v3_large"
    assert [e.head for e in parse_models("all")] == list_heads() and parse_models(None) == []
    for bad, match in [("nope", "unknown head 'nope'.*valid choices: all, aspp"), ("aspp@resnet50", "'resnet50'.*mobilenet_v2"),
                       ("{source: x}", "no source prefix"), ("{weights: w.pt}", "valid keys: source"), ("{a", "not a YAML mapping")]:
        with pytest.raises(ConfigError, match=match):
            parse_models(bad)
    with pytest.raises(ConfigError, match="--heads takes built-in heads.*'torchvision:fcn_resnet50' is a brought model"):
        parse_models("aspp,torchvision:fcn_resnet50", what="--heads", heads_only=True)

    # the same grammar behind each command
    quick = load_recipe("quick")
    assert [k for k, _ in plan_models(quick, "aspp,aspp", "lraspp@mobilenet_v3_large")] == ["aspp", "lraspp"]
    assert plan_models(quick, None, "lraspp@mobilenet_v3_large")[0][1].model.backbone == "mobilenet_v3_large"
    assert [m.key for m in SweepConfig(models="all", backbone="mobilenet_v3_large").parsed_models()] == \
        [f"{h}@mobilenet_v3_large" for h in list_heads()]
    recipe = _recipe(parse_args(["train", "--recipe", "quick", "--out", "x", "--model", "hdc_aspp@mobilenet_v3_large"]))
    assert (recipe.model.head, recipe.model.backbone, recipe.model.source) == ("hdc_aspp", "mobilenet_v3_large", None)
    with pytest.raises(ConfigError, match="--model-arg and --weights belong to a brought model; 'aspp' is a built-in head"):
        _model_entries(parse_args(["train", "--out", "x", "--model", "aspp", "--model-arg", "width=4"]))
    with pytest.raises(ConfigError, match="train takes one --model; got 2"):
        _recipe(parse_args(["train", "--recipe", "quick", "--out", "x", "--model", "aspp,lraspp"]))
