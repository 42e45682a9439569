"""`aspp-edge inspect ARTIFACT`: size, I/O, manifest summary and the backend's own view of the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import AsppEdgeError, choices_error
from ..formats.manifest import ManifestError, describe_model_section, manifest_path, read_manifest


def inspect_artifact(path: str | Path) -> dict[str, Any]:
    """Read an artifact from disk (not from our own objects) and summarise it."""
    from ..formats import BACKENDS, artifact_size, get_backend, suffixes

    path = Path(path)
    readers = {b.suffix: b for b in BACKENDS.values()}  # backends sharing a suffix (.pte) share its reader
    if path.suffix not in readers:
        raise choices_error("artifact type", path.suffix or path.name, suffixes(), cls=AsppEdgeError)
    if not path.exists():
        raise AsppEdgeError(f"artifact {str(path)!r} not found")
    info: dict[str, Any] = {"path": str(path), "size_bytes": artifact_size(path), "format": path.suffix.lstrip(".")}
    info["file"] = readers[path.suffix].summary(path)  # the backend's own reader (the registry's `reader`)
    try:
        manifest = read_manifest(path)
        keys = ("backend", "precision", "method", "model", "input", "output", "labels", "backend_info", "sha256")
        info["manifest"] = {k: manifest[k] for k in keys}
        # how this backend's artifacts are checked on the exporting machine (older manifests: from the registry)
        info["manifest"]["checked_here"] = manifest.get("checked_here") or get_backend(manifest["backend"]).checked_here
        if "metrics" in manifest:
            info["manifest"]["metrics"] = manifest["metrics"]
        if "quantization" in manifest:
            info["manifest"]["quantization"] = manifest["quantization"]
    except ManifestError as exc:
        info["manifest"] = None
        info["manifest_error"] = str(exc) if manifest_path(path).exists() else "no manifest beside the artifact"
    return info


def _hist(ops: dict[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))) or "(none)"


def _half(c: dict[str, Any]) -> str:
    flagged = "; ".join(f"{r['layer']} ({r['type']}): {r['why']}" for r in c["flagged"][:5]) or "none"
    more = f" (+{len(c['flagged']) - 5} more)" if len(c["flagged"]) > 5 else ""
    return (f"float model in fp16 vs fp32: logits {c['logits_sqnr_db']} dB, argmax agreement {c['argmax_agreement']:.4f}; "
            f"{len(c['flagged'])}/{c['layers_checked']} layers flagged: {flagged}{more}")


def format_inspection(info: dict[str, Any]) -> str:
    f, m = info["file"], info.get("manifest")
    lines = [f"{info['path']}  ({info['format']}, {info['size_bytes'] / 1e6:.3f} MB)"]
    if m:
        model = m["model"]
        lines.append(f"  model     {describe_model_section(model)}; {m['backend']} {m['precision']} (method {m['method']})")
        i, o = m["input"], m["output"]
        lines.append(f"  input     {i['name']} {i['kind']} {i['shape']} {i['layout']} {i['dtype']}, quantization {i['quantization']}, "
                     f"normalization by {i['normalization']['applied_by']}")
        lines.append(f"  output    {o['name']} {o['shape']} {o['layout']} {o['dtype']}, quantization {o['quantization']}")
        lines.append(f"  labels    {', '.join(m['labels'])}")
        if "quantization" in m:
            lines.append(f"  float layers  {', '.join(m['quantization']['float_layers']) or 'none (every layer int8)'}")
        if "float_islands" in m["backend_info"]:  # int8 artifacts: what the runtime keeps float, by layer (quantize/islands.py)
            from ..quantize.islands import format_islands

            lines.append(f"  float islands  {format_islands(m['backend_info']['float_islands'])}")
        if "metrics" in m:
            lines.append(f"  metrics   {json.dumps(m['metrics'])}")
        lines.append(f"  checked here  {m['checked_here']}")
    else:
        lines.append(f"  manifest  {info.get('manifest_error')}")
    if info["format"] == "pte":
        lines.append(f"  delegates {f['delegates']}")
        lines.append(f"  non-delegated ops  {_hist(f['non_delegated_ops'])}")
        if m and "conv_mac_fraction" in m["backend_info"]:
            b = m["backend_info"]
            macs = ("conv MACs unknown (none counted)" if b["conv_mac_fraction"] is None
                    else f"{100 * b['conv_mac_fraction']:.1f}% of conv MACs")
            lines.append(f"  delegated {b['nodes_delegated']}/{b['nodes_total']} nodes, {macs} (at export)")
            if "mil_ops" in b:  # Core ML delegate: its ML Program, as the MIL reference interpreter reads it
                lines.append(f"  Core ML   {b['compute_units']}, {b['minimum_deployment_target']}, compute {b['compute_precision']}; "
                             f"MIL ops {_hist(b['mil_ops'])}")
            if "int8_conv_kernels" in b:  # Vulkan int8: convs fused into its int8 kernels vs float convs between Q/DQ
                lines.append(f"  Vulkan    {b['int8_conv_kernels']} int8 conv kernels, {b['float_convs_in_int8_program']} float convs")
            if "fp16_check" in b:
                lines.append(f"  fp16 check  {_half(b['fp16_check'])}")
    elif info["format"] == "tflite":
        lines.append(f"  ops       {_hist(f['ops'])}")
        lines.append(f"  Q/DQ at I/O   {len(f['qdq_at_io'])}: {'; '.join(f['qdq_at_io']) or '-'}")
        lines.append(f"  Q/DQ inside   {len(f['qdq_inside'])} (float islands): {'; '.join(f['qdq_inside']) or '-'}")
        if f.get("fp16_weight_dequantize"):
            lines.append(f"  fp16 weights (DEQUANTIZE)  {f['fp16_weight_dequantize']} float16 constants, dequantized at load on the CPU")
        if m and "fp16_check" in m["backend_info"]:
            lines.append(f"  fp16 check  {_half(m['backend_info']['fp16_check'])}")
        xnn = f.get("xnnpack")
        if xnn:
            outside = _hist(xnn["ops_outside"]) if xnn["ops_outside"] else "none"
            lines.append(f"  XNNPACK   {xnn['partitions']} partition(s); ops outside: {outside}")
            lines.extend(f"    {name}: {why}" for name, why in xnn["why"].items())
        md = f.get("metadata") or {}
        lines.append(f"  metadata  {json.dumps(md) if md else '(none)'}; associated files {f.get('associated_files')}")
    elif info["format"] == "mlpackage":
        lines.append(f"  I/O       inputs {f['inputs']}, outputs {f['outputs']}")
        lines.append(f"  MIL ops   {_hist(f['ops'])}")
        from ..runtime.mil import SUPPORTED_OPS

        outside = sorted(set(f["ops"]) - set(SUPPORTED_OPS))
        verdict = "runs every op of this program (Linux check)" if not outside else "cannot run: " + ", ".join(outside)
        lines.append(f"  mil-reference  {verdict}")
        preview = {k: v for k, v in f["metadata"].items() if k.startswith("com.apple")}
        lines.append(f"  metadata  {json.dumps(preview)}; {len(f['metadata'])} user-defined keys")
    else:  # a registered backend's own summary, as its reader gives it
        lines.extend(f"  {k:<9} {json.dumps(v)}" for k, v in f.items())
    return "\n".join(lines)
