"""Artifacts for the demo apps: `install_for_apps(artifacts, app_root, recipe)` copies the chosen
artifacts under the fixed names the Android and iOS apps load, with their manifests, a sample
image at the model's input size and, per artifact, the mask the host demo predicts for it (the
apps' instrumented tests compare their own mask with it).

Android reads `android/app/src/main/assets/`; iOS bundles `ios/AsppEdgeDemo/Models/`. Both
directories are generated (git-ignored); the names below are the ones the app code uses.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .errors import AsppEdgeError, choices_error
from .formats import BACKENDS
from .formats.manifest import manifest_path, read_manifest, validate_manifest
from .fileio import atomic_path

ANDROID_ASSETS = Path("android/app/src/main/assets")
IOS_MODELS = Path("ios/AsppEdgeDemo/Models")
APP_FOLDERS = {"android": ANDROID_ASSETS, "ios": IOS_MODELS}


def app_files() -> dict[str, tuple[str, tuple[Path, ...]]]:
    """backend -> (file name the apps load, the app folders it goes to), from the backend registry
    (`Backend.app_file`, `app_platforms`)."""
    return {b.name: (b.app_file, tuple(APP_FOLDERS[p] for p in b.app_platforms)) for b in BACKENDS.values() if b.app_file}


APP_FILES = app_files()
SAMPLE = "sample.png"
INDEX = "apps.json"


def expected_mask_name(app_file: str) -> str:
    return f"{app_file}.expected_mask.png"


def sample_image(recipe, index: int = 0) -> np.ndarray:
    """Val image `index` of the recipe as H x W x 3 uint8 pixels, at the model's input size."""
    from .data import build_dataset, to_pixels

    image, _ = build_dataset(recipe, "val")[index]
    return to_pixels(image, recipe.data.mean, recipe.data.std)


def choose(artifacts: list[str | Path]) -> dict[str, Path]:
    """One artifact per backend; two for the same backend is an error naming both."""
    from .formats import backend_for, suffixes

    chosen: dict[str, Path] = {}
    for a in map(Path, artifacts):
        try:
            backend = backend_for(a).name
        except AsppEdgeError:
            raise AsppEdgeError(f"{str(a)!r} is not an artifact; valid types: {', '.join(sorted(suffixes()))}") from None
        if backend not in app_files():
            raise choices_error("backend for the apps", f"{backend} ({a.name})", app_files(), cls=AsppEdgeError)
        if backend in chosen:
            raise AsppEdgeError(f"the apps take one {backend} artifact; got {chosen[backend].name} and {a.name}")
        chosen[backend] = a
    if not chosen:
        raise AsppEdgeError("no artifacts to install for the apps")
    return chosen


def check_app_root(app_root: str | Path) -> Path:
    root = Path(app_root)
    if not (root / "android").is_dir() or not (root / "ios").is_dir():
        raise AsppEdgeError(f"--for-apps {str(root)!r} is not the mobile_demo folder (it needs android/ and ios/)")
    return root


def install_for_apps(artifacts: list[str | Path], app_root: str | Path, recipe, *, sample: np.ndarray | None = None,
                     threads: int | None = None) -> dict[str, Any]:
    """Copy `artifacts` (one per backend) into the apps under `app_root` (the mobile_demo folder).

    Every file is checked and every expected mask computed before anything is written; each file
    is then written atomically. Returns the index also written as `apps.json` in each app folder.
    """
    from .demo import save_png, segment
    from .runtime import check_artifact, load

    root = check_app_root(app_root)
    chosen = {backend: check_artifact(path) for backend, path in choose(artifacts).items()}
    masks: dict[str, np.ndarray] = {}
    entries: dict[str, dict[str, Any]] = {}
    for backend, path in chosen.items():
        runner = load(path, threads=threads)
        _, _, h, w = runner.input_shape
        if sample is None:
            sample = sample_image(recipe)
        if sample.shape[:2] != (h, w):
            raise AsppEdgeError(f"{path.name} takes {w}x{h} images but the sample is {sample.shape[1]}x{sample.shape[0]}; "
                                "the apps' artifacts must share one input size")
        seg = segment(runner, sample)
        app_file = app_files()[backend][0]
        masks[app_file] = seg.mask
        m = runner.manifest
        entries[backend] = {"file": app_file, "manifest": manifest_path(app_file).name, "expected_mask": expected_mask_name(app_file),
                            "source_artifact": path.name, "precision": m["precision"], "method": m["method"],
                            "expected_mask_by": runner.evaluated_by}
    index = {"sample": SAMPLE, "artifacts": entries}
    slots = app_files()
    for backend, path in chosen.items():
        app_file, folders = slots[backend]
        manifest = read_manifest(path)
        manifest["artifact"] = app_file
        manifest["source"]["artifact"] = path.name
        validate_manifest(manifest, app_file)
        for folder in folders:
            dest = root / folder
            with atomic_path(dest / app_file) as tmp:
                (shutil.copytree if path.is_dir() else shutil.copyfile)(path, tmp)
            with atomic_path(dest / manifest_path(app_file).name) as tmp:
                tmp.write_text(json.dumps(manifest, indent=2))
            save_png(masks[app_file], dest / expected_mask_name(app_file))
    for folder in {f for _, folders in slots.values() for f in folders}:
        dest = root / folder
        here = {b: e for b, e in entries.items() if folder in slots[b][1]}
        save_png(sample, dest / SAMPLE)
        with atomic_path(dest / INDEX) as tmp:
            tmp.write_text(json.dumps({"sample": SAMPLE, "artifacts": here}, indent=2))
    return index
