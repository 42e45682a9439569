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
        ("data:\n  dataset: coco\n", r"unknown data.dataset 'coco'; valid choices: folder, synthetic"),
        ("data:\n  mean: [0.5, 0.5]\n", r"recipe key 'data.mean' must have 3 entries"),
        ("train:\n  optimizer: lbfgs\n", r"unknown train.optimizer 'lbfgs'; valid choices: adamw, sgd"),
        ("- a\n- b\n", r"must be a YAML mapping"),
    ],
)
def test_bad_recipes(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_recipe(_write(tmp_path, text))


def test_unknown_recipe_name():
    with pytest.raises(ConfigError, match=r"recipe 'nope' is neither a built-in recipe nor a file; built-in recipes: default, quick"):
        load_recipe("nope")
