"""Published torchvision weights by name, offline: seeded state dicts of the right shapes placed in a
temporary $TORCH_HOME under torchvision's own file names, as a download would leave them."""

from __future__ import annotations

import json
import urllib.error

import pytest
import torch
import torchvision

from aspp_edge.config import load_recipe
from aspp_edge.errors import AsppEdgeError, CheckpointError, ConfigError
from aspp_edge.models import create_model, describe_model
from aspp_edge.models.brought import build_brought
from aspp_edge.models.pretrained import OFFLINE_ENV, hub_file, resolve

SMALL = dict(num_classes=4, head_channels=16, input_size=64)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty $TORCH_HOME and no downloads (the offline switch), as on this machine."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(OFFLINE_ENV, "1")
    return tmp_path / "torch" / "hub" / "checkpoints"


def place(builder: str, name: str, model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seed `model`'s float tensors, save its state dict where torchvision's `name` weights live."""
    torch.manual_seed(seed)
    state = {k: (torch.randn_like(v) if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    path = hub_file(resolve(builder, name, imagenet=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


@pytest.mark.parametrize("backbone, builder, name, cut", [
    ("mobilenet_v2", torchvision.models.mobilenet_v2, "imagenet", 18),  # the 1280-channel conv (features.18) is dropped
    ("mobilenet_v3_large", torchvision.models.mobilenet_v3_large, "IMAGENET1K_V2", None),
])
def test_imagenet_backbone_weights_land_tensor_for_tensor(hub, backbone, builder, name, cut):
    state = place(backbone, name, builder())
    assert hub_file(resolve(backbone, name, imagenet=True)).name == {"mobilenet_v2": "mobilenet_v2-7ebf99e0.pth",
                                                                     "mobilenet_v3_large": "mobilenet_v3_large-5c1a4163.pth"}[backbone]
    model = create_model("sep_aspp", backbone=backbone, backbone_weights=name, **SMALL)
    own = model.backbone.features.state_dict()
    wanted = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    if cut is not None:
        wanted = {k: v for k, v in wanted.items() if int(k.split(".")[0]) < cut}
    assert set(own) == set(wanted)
    for key, tensor in own.items():
        assert torch.equal(tensor, wanted[key]), key
    random = create_model("sep_aspp", backbone=backbone, **SMALL).backbone.features.state_dict()
    assert not torch.equal(random["0.0.weight"], own["0.0.weight"])


def test_missing_weights_offline_name_the_file_and_where(hub):
    with pytest.raises(CheckpointError) as err:
        create_model("sep_aspp", backbone_weights="imagenet", **SMALL)
    text = str(err.value)
    assert "\n" not in text and "MobileNet_V2_Weights.IMAGENET1K_V2" in text
    assert f"place mobilenet_v2-7ebf99e0.pth" in text and str(hub / "mobilenet_v2-7ebf99e0.pth") in text
    assert not hub.exists()  # nothing half-written


def test_a_failed_download_is_one_line_naming_the_file(hub, monkeypatch):
    monkeypatch.delenv(OFFLINE_ENV)
    calls = []

    def no_network(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network)
    with pytest.raises(CheckpointError, match=r"could not be downloaded \(URLError: .*name resolution.*\); place "
                                               r"mobilenet_v3_large-5c1a4163\.pth") as err:
        create_model("sep_aspp", backbone="mobilenet_v3_large", backbone_weights="DEFAULT", **SMALL)
    assert calls == ["https://download.pytorch.org/models/mobilenet_v3_large-5c1a4163.pth"] and "\n" not in str(err.value)


def test_wrong_architecture_or_shape_or_width_is_refused_in_one_line(hub):
    place("mobilenet_v2", "IMAGENET1K_V2", torchvision.models.mobilenet_v3_large())  # the other network under v2's name
    with pytest.raises(CheckpointError, match=r"MobileNet_V2_Weights\.IMAGENET1K_V2 .*(lack|shape)") as err:
        create_model("sep_aspp", backbone_weights="imagenet", **SMALL)
    assert "\n" not in str(err.value)
    place("mobilenet_v2", "IMAGENET1K_V2", torchvision.models.mobilenet_v2(width_mult=0.5))
    with pytest.raises(CheckpointError, match=r"features\.0\.0\.weight has shape \(16, 3, 3, 3\), this backbone needs \(32, 3, 3, 3\)"):
        create_model("sep_aspp", backbone_weights="IMAGENET1K_V2", **SMALL)
    with pytest.raises(ConfigError, match=r"fit width_mult 1\.0 only, not 0\.5"):
        create_model("sep_aspp", backbone_weights="imagenet", width_mult=0.5, **SMALL)
    with pytest.raises(ConfigError, match=r"model\.backbone_weights 'imagenet' .*width_mult 1\.0 only, not 0\.25"):
        load_recipe("quick").replace(model={"backbone_weights": "imagenet"})
    with pytest.raises(CheckpointError, match=r"'IMAGENET1K_V3' are neither a file nor a weights name of mobilenet_v2; valid names: "
                                               r"IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT, imagenet"):
        create_model("sep_aspp", backbone_weights="IMAGENET1K_V3", **SMALL)
    (hub / "mobilenet_v2-7ebf99e0.pth").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="is corrupt or not a weights-only torch file"):
        create_model("sep_aspp", backbone_weights="imagenet", **SMALL)


def test_the_recipe_records_the_weights_and_follows_their_normalisation(hub):
    place("mobilenet_v2", "IMAGENET1K_V2", torchvision.models.mobilenet_v2())
    recipe = load_recipe("quick").replace(model={"width_mult": 1.0, "backbone_weights": "imagenet"}, data={"mean": None, "std": None})
    weights = resolve("mobilenet_v2", "imagenet", imagenet=True)
    t = weights.transforms()
    assert (list(recipe.data.mean), list(recipe.data.std)) == (list(t.mean), list(t.std)) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    own = recipe.replace(data={"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})
    assert own.data.mean == (0.5, 0.5, 0.5)  # the recipe's own constants win
    from aspp_edge.fileio import sha256_file

    section = describe_model(recipe)
    assert section["pretrained"] == {"weights": "MobileNet_V2_Weights.IMAGENET1K_V2", "file": "mobilenet_v2-7ebf99e0.pth",
                                     "sha256": sha256_file(hub / "mobilenet_v2-7ebf99e0.pth"), "part": "backbone"}
    assert "pretrained" not in describe_model(load_recipe("quick"))
    from aspp_edge.formats.manifest import describe_model_section

    assert "started from MobileNet_V2_Weights.IMAGENET1K_V2 (mobilenet_v2-7ebf99e0.pth, sha256 " in describe_model_section(section)
    assert json.loads(json.dumps(recipe.to_dict()))["data"]["mean"] == [0.485, 0.456, 0.406]


# -- torchvision segmentation models with their published weights ---------------------------------

def _lraspp(num_classes=21):
    return torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes)


def test_torchvision_default_weights_load_whole_and_classes_come_from_them(hub):
    with pytest.raises(CheckpointError, match=r"LRASPP_MobileNet_V3_Large_Weights\.COCO_WITH_VOC_LABELS_V1 are not in the torch hub "
                                               r"cache .*place lraspp_mobilenet_v3_large-d234d4ea\.pth"):
        build_brought("torchvision:lraspp_mobilenet_v3_large", num_classes=21, input_size=64, weights="DEFAULT")
    state = place("lraspp_mobilenet_v3_large", "COCO_WITH_VOC_LABELS_V1", _lraspp())
    model = build_brought("torchvision:lraspp_mobilenet_v3_large", num_classes=21, input_size=64, weights="DEFAULT")
    own = model.model.state_dict()
    assert set(own) == set(state) and all(torch.equal(own[k], state[k]) for k in own)
    with pytest.raises(ConfigError, match=r"predict 21 classes \(__background__, aeroplane, bicycle, \.\.\.\) but the data has 6: "
                                          r"set model.rehead: true"):
        build_brought("torchvision:lraspp_mobilenet_v3_large", num_classes=6, input_size=64, weights="DEFAULT")
    with pytest.raises(CheckpointError, match=r"'DEFALT' for torchvision:lraspp_mobilenet_v3_large are neither a file nor a published "
                                               r"weights name; valid names: COCO_WITH_VOC_LABELS_V1, DEFAULT"):
        build_brought("torchvision:lraspp_mobilenet_v3_large", num_classes=21, input_size=64, weights="DEFALT")


def test_rehead_keeps_every_tensor_but_the_per_class_layers(hub):
    state = place("lraspp_mobilenet_v3_large", "COCO_WITH_VOC_LABELS_V1", _lraspp())
    model = build_brought("torchvision:lraspp_mobilenet_v3_large", num_classes=6, input_size=64, weights="DEFAULT", rehead=True)
    own = model.model.state_dict()
    fresh = sorted(k for k in own if own[k].shape != state[k].shape)
    assert fresh == ["classifier.high_classifier.bias", "classifier.high_classifier.weight", "classifier.low_classifier.bias",
                     "classifier.low_classifier.weight"]
    assert all(own[k].shape[0] == 6 for k in fresh)
    assert all(torch.equal(own[k], state[k]) for k in own if k not in fresh)
    recipe = load_recipe("quick").replace(model={"source": "torchvision:lraspp_mobilenet_v3_large", "weights": "DEFAULT",
                                                 "rehead": True})
    assert describe_model(recipe, model)["pretrained"]["part"] == "model, re-headed"


def test_deeplabv3_default_weights_drop_the_aux_classifier(hub):
    full = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21,
                                                                        aux_loss=True)
    state = place("deeplabv3_mobilenet_v3_large", "DEFAULT", full)
    assert any(k.startswith("aux_classifier.") for k in state)
    model = build_brought("torchvision:deeplabv3_mobilenet_v3_large", num_classes=21, input_size=64, weights="DEFAULT")
    own = model.model.state_dict()
    assert not any(k.startswith("aux_classifier.") for k in own) and all(torch.equal(v, state[k]) for k, v in own.items())
    assert issubclass(CheckpointError, AsppEdgeError)


def test_the_manifest_schema_takes_the_record_and_refuses_a_malformed_one(hub):
    import jsonschema

    from aspp_edge.formats.manifest import schema

    place("mobilenet_v2", "IMAGENET1K_V2", torchvision.models.mobilenet_v2())
    recipe = load_recipe("quick").replace(model={"width_mult": 1.0, "backbone_weights": "imagenet"})
    model_schema = {**schema()["properties"]["model"], "$defs": schema().get("$defs", {})}
    section = describe_model(recipe)
    jsonschema.validate(section, model_schema)
    for bad in ({**section["pretrained"], "part": "head"}, {k: v for k, v in section["pretrained"].items() if k != "sha256"},
                {**section["pretrained"], "sha256": "abc"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**section, "pretrained": bad}, model_schema)
