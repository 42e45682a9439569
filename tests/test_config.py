"""Recipes: built-ins load, JSON round trip, and strict validation."""

from __future__ import annotations

import json

import pytest

from aspp_edge.config import Recipe, builtin_recipes, load_recipe
from aspp_edge.errors import ConfigError


def test_builtin_recipes_load_and_round_trip():
    assert {"quick", "default"} <= set(builtin_recipes())
    for name in ("quick", "default"):
        r = load_recipe(name)
        assert r.name == name
        assert Recipe.from_dict(json.loads(r.to_json())) == r


def test_default_recipe_is_the_main_job():
    r = load_recipe("default")
    assert (r.model.backbone, r.model.output_stride, r.model.head, r.model.decoder) == (
        "mobilenet_v2", 16, "sep_aspp", "deeplabv3plus")


def _write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text,match",
    [
        ("model:\n  haed: aspp\n", r"unknown recipe key 'model.haed'; valid keys here: head, backbone"),
        ("trian:\n  epochs: 1\n", r"unknown recipe key 'trian'"),
        ("train:\n  epochs: two\n", r"recipe key 'train.epochs' must be int, got 'two'"),
        ("train:\n  lr: true\n", r"recipe key 'train.lr' must be float, got True"),
        ("model:\n  head: big\n", r"unknown model.head 'big'; valid choices: aspp, aspp_nobn"),
        ("model:\n  output_stride: 4\n", r"model.output_stride 4 is not supported; valid choices: 8, 16"),
        ("data:\n  resolution: 100\n", r"data.resolution 100 is not divisible by model.output_stride 16"),
        ("data:\n  dataset: coco\n", r"unknown data.dataset 'coco'; valid choices: ade20k, cityscapes, folder, synthetic, voc"),
        ("data:\n  mean: [0.5, 0.5]\n", r"recipe key 'data.mean' must have 3 entries"),
        ("train:\n  optimizer: lbfgs\n", r"unknown train.optimizer 'lbfgs'; valid choices: adamw, sgd"),
        ("- a\n- b\n", r"must be a YAML mapping"),
    ],
)
def test_bad_recipes(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_recipe(_write(tmp_path, text))


def test_unknown_recipe_name():
    with pytest.raises(ConfigError, match=r"recipe 'nope' is neither a built-in recipe nor a file; built-in recipes: cityscapes, default, quick, voc"):
        load_recipe("nope")


def test_qat_freeze_steps_scale_with_steps(tmp_path):
    """A recipe that shortens QAT without naming the freeze steps loads (issue 19 item 7): by default
    BN and ranges are held from step 0 (issue 37); `null` makes them 2/3 and 5/6 of `steps`; set,
    they are kept and checked against `steps`."""
    short = load_recipe(_write(tmp_path, "qat:\n  steps: 4\n")).qat
    assert (short.freeze_bn_step, short.freeze_observer_step) == (0, 0) == (short.bn_freeze_at, short.observer_freeze_at)
    scaled = load_recipe(_write(tmp_path, "qat:\n  steps: 4\n  freeze_bn_step: null\n  freeze_observer_step: null\n")).qat
    assert (scaled.freeze_bn_step, scaled.freeze_observer_step) == (None, None)
    assert (scaled.bn_freeze_at, scaled.observer_freeze_at) == (2, 3)
    from aspp_edge.config import QATConfig

    unset = QATConfig(freeze_bn_step=None, freeze_observer_step=None)
    assert (unset.bn_freeze_at, unset.observer_freeze_at) == (200, 250)
    assert (QATConfig(steps=1).bn_freeze_at, QATConfig(steps=1).observer_freeze_at) == (0, 0)
    assert QATConfig(steps=10, freeze_bn_step=10, freeze_observer_step=0).bn_freeze_at == 10
    # a changed `steps` keeps the unset steps relative, and `replace` keeps them unset
    recipe = load_recipe("quick").replace(qat={"freeze_bn_step": None, "freeze_observer_step": None}).replace(qat={"steps": 60})
    assert (recipe.qat.bn_freeze_at, recipe.qat.observer_freeze_at) == (40, 50)
    assert Recipe.from_dict(json.loads(recipe.to_json())) == recipe
    with pytest.raises(ConfigError, match=r"qat.freeze_bn_step 200 must be between 0 and qat.steps \(4\); leave it unset"):
        load_recipe(_write(tmp_path, "qat:\n  steps: 4\n  freeze_bn_step: 200\n"))


def test_dropout_default_is_the_models_default():
    import inspect

    from aspp_edge.config import ModelConfig
    from aspp_edge.models import create_model
    from aspp_edge.models.aspp import DEFAULT_DROPOUT

    assert ModelConfig.__dataclass_fields__["dropout"].default == DEFAULT_DROPOUT
    assert inspect.signature(create_model).parameters["dropout"].default == DEFAULT_DROPOUT
