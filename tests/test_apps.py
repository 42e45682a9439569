"""What the demo apps rely on: the contract document against the schema, every manifest against
the schema, `--for-apps` installs with expected masks the host demo reproduces, and static checks
of the Android and iOS projects (well-formed XML, plist, TOML and YAML, pinned dependencies, every
asset they name). tests/test_app_sources.py parses the Kotlin and Swift sources with real grammars
and checks the build settings Gradle and Xcode reject."""

from __future__ import annotations

import hashlib
import json
import plistlib
import re
import shutil
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml
from PIL import Image

from aspp_edge.apps import APP_FILES, INDEX, SAMPLE, expected_mask_name, install_for_apps
from aspp_edge.config import load_recipe
from aspp_edge.demo import read_rgb, segment
from aspp_edge.errors import AsppEdgeError
from aspp_edge.formats.manifest import SCHEMA_PATH, manifest_path
from aspp_edge.pipeline import run
from aspp_edge.runtime import load

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "mobile_demo"
CONTRACT = DEMO / "CONTRACT.md"
ANDROID, IOS = DEMO / "android", DEMO / "ios"


def schema_fields() -> set[str]:
    """Dotted names of every property the schema defines (quantization fields as `quantization.*`)."""
    schema = json.loads(SCHEMA_PATH.read_text())
    defs = schema["$defs"]
    fields: set[str] = set()

    def walk(node: dict, prefix: str) -> None:
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[1]
            if name == "quantization":
                fields.update(f"quantization.{k}" for k in defs["quantization"]["oneOf"][1]["properties"])
                return
            node = defs[name]
        for key, sub in node.get("properties", {}).items():
            fields.add(prefix + key)
            walk(sub, prefix + key + ".")

    walk(schema, "")
    return fields


def contract_fields() -> set[str]:
    """The backticked names in the first column of CONTRACT.md's field table."""
    text = CONTRACT.read_text()
    table = text.split("## Manifest fields", 1)[1].split("\n## ", 1)[0]
    return {m.group(1) for m in re.finditer(r"^\| `([a-z0-9_.]+)` \|", table, re.M)}


def test_contract_documents_exactly_the_schema_fields():
    documented, defined = contract_fields(), schema_fields()
    assert len(defined) > 40
    assert documented - defined == set(), "CONTRACT.md documents fields the schema lacks"
    assert defined - documented == set(), "schema fields missing from CONTRACT.md"
    assert "src/aspp_edge/formats/manifest.schema.json" in CONTRACT.read_text()


def test_every_manifest_the_exporters_write_follows_the_schema(quick_run):
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    manifests = sorted((quick_run / "sep_aspp" / "artifacts").glob("*.manifest.json"))
    assert {m.name.split(".")[-3] for m in manifests} == {"pte", "tflite", "mlpackage"} and len(manifests) == 6
    for path in manifests:
        manifest = json.loads(path.read_text())
        assert not list(validator.iter_errors(manifest)), path.name
        broken = dict(manifest, input=dict(manifest["input"], layout="CHW"))
        assert list(validator.iter_errors(broken)), "the schema must reject a bad layout"


def app_copy(tmp_path: Path) -> Path:
    """The app sources copied without generated assets, as a fresh clone has them."""
    dest = tmp_path / "mobile_demo"
    shutil.copytree(DEMO, dest, ignore=shutil.ignore_patterns("assets", "Models", "build", ".gradle"))
    return dest


def int8_artifacts(quick_run) -> list[Path]:
    folder = quick_run / "sep_aspp" / "artifacts"
    return sorted(p for p in folder.iterdir() if p.suffix in (".pte", ".tflite", ".mlpackage") and p.stem.endswith("_int8"))


def test_for_apps_installs_artifacts_and_expected_masks_the_host_demo_reproduces(quick_run, tmp_path):
    root = app_copy(tmp_path)
    chosen = int8_artifacts(quick_run)
    assert {p.suffix for p in chosen} == {".pte", ".tflite", ".mlpackage"}
    index = install_for_apps(chosen, root, load_recipe("quick"))
    assert set(index["artifacts"]) == {"executorch", "tflite", "coreml"}
    for backend, (app_file, folders) in APP_FILES.items():
        for folder in folders:
            dest = root / folder
            installed = dest / app_file
            manifest = json.loads(manifest_path(installed).read_text())
            assert manifest["artifact"] == app_file and manifest["source"]["artifact"].endswith(f"_int8.{installed.suffix[1:]}")
            if installed.is_file():  # the Android app compares its model copy with this (Segmenters.kt, Assets)
                assert hashlib.sha256(installed.read_bytes()).hexdigest() == manifest["sha256"], installed
            sample = read_rgb(dest / SAMPLE)
            assert sample.shape == (64, 64, 3)
            expected = np.asarray(Image.open(dest / expected_mask_name(app_file)))
            # the host demo, run now on the installed copy, gives exactly the expected mask
            assert np.array_equal(segment(load(installed), sample).mask, expected), (folder, app_file)
            assert len(np.unique(expected)) >= 2  # a real segmentation, not a constant
            listed = json.loads((dest / INDEX).read_text())
            assert listed["artifacts"][backend]["file"] == app_file
    # the sample is val image 0 of the recipe, as pixels
    from aspp_edge.apps import sample_image

    assert np.array_equal(read_rgb(root / "android/app/src/main/assets" / SAMPLE), sample_image(load_recipe("quick")))


def test_for_apps_refusals_write_nothing(quick_run, tmp_path):
    root = app_copy(tmp_path)
    chosen = int8_artifacts(quick_run)
    fp32 = quick_run / "sep_aspp" / "artifacts" / "quick_sep_aspp_tflite_fp32.tflite"
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    with pytest.raises(AsppEdgeError, match="one tflite artifact"):
        install_for_apps(chosen + [fp32], root, load_recipe("quick"))
    with pytest.raises(AsppEdgeError, match="not the mobile_demo folder"):
        install_for_apps(chosen, tmp_path, load_recipe("quick"))
    with pytest.raises(AsppEdgeError, match="valid types"):
        install_for_apps([quick_run / "report.json"], root, load_recipe("quick"))
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_run_for_apps_installs_the_best_int8_artifact_of_each_backend(quick_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(quick_run, out)
    root = app_copy(tmp_path)
    summary = run(load_recipe("quick"), out, methods="ptq", runs=3, peaks=False, progress=False, numerics_images=0, for_apps=root)
    assert summary.stages_run == 0 and any(line.startswith("apps: ") for line in summary.log)
    listed = json.loads((root / "android/app/src/main/assets" / INDEX).read_text())
    assert {e["source_artifact"] for e in listed["artifacts"].values()} == {"quick_sep_aspp_ptq_executorch_int8.pte",
                                                                        "quick_sep_aspp_ptq_tflite_int8.tflite"}
    listed = json.loads((root / "ios/AsppEdgeDemo/Models" / INDEX).read_text())
    assert listed["artifacts"]["coreml"]["source_artifact"] == "quick_sep_aspp_ptq_coreml_int8.mlpackage"
    assert listed["artifacts"]["coreml"]["expected_mask_by"] == "mil-reference"


# ---- static checks of the app projects (no Android SDK or Xcode here) ----

def kotlin_and_swift() -> list[Path]:
    files = sorted(ANDROID.rglob("*.kt")) + sorted(IOS.rglob("*.swift"))
    assert len(files) >= 6
    return files


def test_android_project_files_are_well_formed_and_pinned():
    catalog = tomllib.loads((ANDROID / "gradle/libs.versions.toml").read_text())
    versions = catalog["versions"]
    assert versions["executorch"] == "1.5.1" and versions["litert"].startswith("2.")  # the Python stack's runtimes
    for name, lib in catalog["libraries"].items():
        ref = lib.get("version", {}).get("ref") if isinstance(lib.get("version"), dict) else None
        assert ref in versions, f"library {name} is not pinned through [versions]"
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.\-]*", v) for v in versions.values()), "no dynamic versions (+, latest)"
    for path in ANDROID.rglob("*.xml"):
        ET.parse(path)  # raises on malformed XML
    manifest = ET.parse(ANDROID / "app/src/main/AndroidManifest.xml").getroot()
    ns = "{http://schemas.android.com/apk/res/android}"
    assert "android.permission.CAMERA" in {e.get(ns + "name") for e in manifest.iter("uses-permission")}
    for gradle in list(ANDROID.rglob("*.gradle.kts")):
        assert not re.search(r':\d[^"]*\+"', gradle.read_text()), f"dynamic version in {gradle}"
    app_gradle = (ANDROID / "app/build.gradle.kts").read_text()
    assert "libs.executorch" in app_gradle and "libs.litert" in app_gradle and "camera" in app_gradle
    # LiteRT memory-maps the .tflite from the APK (AssetManager.openFd): it must be stored uncompressed
    assert re.search(r'^\s*noCompress\s*\+=.*"tflite"', app_gradle, re.M)
    assert "Assets.mapped(context, Assets.TFLITE" in (ANDROID / "app/src/main/java/dev/asppedge/demo/Segmenters.kt").read_text()


def test_ios_project_files_are_well_formed():
    with open(IOS / "AsppEdgeDemo/Info.plist", "rb") as f:
        info = plistlib.load(f)
    assert info["CFBundleIdentifier"] == "$(PRODUCT_BUNDLE_IDENTIFIER)" and "NSPhotoLibraryUsageDescription" in info
    project = yaml.safe_load((IOS / "project.yml").read_text())
    targets = project["targets"]
    assert {"AsppEdgeDemo", "AsppEdgeDemoTests"} <= set(targets)
    sources = [s if isinstance(s, str) else s["path"] for s in targets["AsppEdgeDemo"]["sources"]]
    assert "AsppEdgeDemo/Models" in sources  # the --for-apps folder is bundled
    pkg = project["packages"]["ExecuTorch"]
    assert "executorch" in pkg["url"] and "1.5.1" in json.dumps(pkg)


def named_assets(text: str) -> set[str]:
    return set(re.findall(r'"([A-Za-z0-9_.]+\.(?:pte|tflite|png|json))"', text)) | set(re.findall(r'"(Segmenter)"', text))


def test_every_asset_the_apps_name_exists_after_for_apps(quick_run, tmp_path):
    root = app_copy(tmp_path)
    install_for_apps(int8_artifacts(quick_run), root, load_recipe("quick"))
    checked = 0
    for source in kotlin_and_swift():
        names = named_assets(source.read_text())
        folder = root / ("android/app/src/main/assets" if source.suffix == ".kt" else "ios/AsppEdgeDemo/Models")
        for name in names:
            candidates = [folder / name, folder / f"{name}.mlpackage"]
            assert any(c.exists() for c in candidates), f"{source.relative_to(DEMO)} names {name!r}, not in {folder.relative_to(root)}"
            checked += 1
    assert checked >= 8
