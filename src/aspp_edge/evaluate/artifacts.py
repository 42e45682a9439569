"""`aspp-edge eval`: artifacts measured on the val split against the float model they were made
from, found by the checkpoint hash their manifest records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Recipe


def find_reference(artifact: Path, given: str | Path | None = None) -> Path:
    """The float checkpoint an artifact was made from: `given`, or a float.pt of its run whose sha256
    matches the manifest's `source.checkpoint_sha256`."""
    from ..errors import AsppEdgeError
    from ..formats.manifest import read_manifest
    from ..fileio import sha256_file
    from ..train import FINAL

    if given is not None:
        if not Path(given).is_file():
            raise AsppEdgeError(f"reference checkpoint {str(given)!r} not found")
        return Path(given)
    want = read_manifest(artifact)["source"].get("checkpoint_sha256")
    candidates = [artifact.parent / FINAL, artifact.parent.parent / "float" / FINAL, artifact.parent / "float" / FINAL]
    for path in candidates:
        if path.is_file() and want and sha256_file(path) == want:
            return path
    raise AsppEdgeError(
        f"no float reference found for {artifact.name}: pass --reference float.pt (the checkpoint with sha256 {want}); "
        f"looked at {', '.join(str(c) for c in candidates)}"
    )


def eval_artifacts(paths: list[str | Path], *, recipe: Recipe | None = None, reference: str | Path | None = None,
                   threads: int | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Accuracy of each artifact on the val split against its float reference (CUDA if present, else CPU)."""
    from .. import runtime
    from ..checkpoint import load_model
    from ..data import build_dataset
    from .accuracy import evaluate, float_reference
    from .results import EvaluatedBy

    checked = [runtime.check_artifact(p) for p in paths]
    refs: dict[Path, Any] = {}
    rows = []
    for path in checked:
        ckpt = find_reference(path, reference)
        if ckpt not in refs:
            model, ckpt_recipe, _ = load_model(ckpt, recipe)
            val = build_dataset(ckpt_recipe, "val")
            refs[ckpt] = (ckpt_recipe, val, float_reference(model, val, batch_size=ckpt_recipe.train.batch_size, progress=progress))
        ckpt_recipe, val, ref = refs[ckpt]
        row = {"path": str(path), "reference": str(ckpt), "reference_device": ref.device, "reference_miou": ref.miou,
               "reference_spread": ref.spread}
        try:
            runner = runtime.load(path, threads=threads)
        except runtime.RuntimeMissing as exc:
            row.update(evaluated_by=str(EvaluatedBy.not_run(exc)))
        else:
            row.update(evaluate(runner, val, ref, batch_size=ckpt_recipe.train.batch_size, progress=progress).to_dict())
        rows.append(row)
    return rows
