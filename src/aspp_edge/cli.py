"""`aspp-edge`: a thin command line over the library. Each subcommand calls one library function."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from collections.abc import Sequence

from .config import METHODS, OBSERVERS, RUN_METHODS
from .errors import AsppEdgeError
from .formats import BACKENDS, DEFAULT_BACKENDS


def _cmd_list(args: argparse.Namespace) -> None:
    from .models import list_heads
    from .models.registry import BACKBONES, DECODERS

    if not args.stats:
        print("heads:     " + ", ".join(list_heads()))
        print("backbones: " + ", ".join(BACKBONES.names()))
        print("decoders:  " + ", ".join(DECODERS.names()))
        from .models.brought import torchvision_builders

        print("brought (--model): " + ", ".join(f"torchvision:{n}" for n in torchvision_builders())
              + ", smp:ARCH (pip install 'aspp-edge[smp]'), module.path:callable")
        return
    from .models import create_model
    from .models.stats import model_stats

    print(
        f"{args.backbone}, output stride {args.output_stride}, width {args.width_mult}, {args.decoder}, "
        f"{args.num_classes} classes, input {args.size}x{args.size}; MACs counted by torch's FlopCounterMode"
    )
    print(f"{'head':<12} {'params (M)':>10} {'GMACs':>8} {'head params (M)':>16} {'head GMACs':>11}")
    for name in list_heads():
        model = create_model(
            name, num_classes=args.num_classes, backbone=args.backbone, decoder=args.decoder,
            output_stride=args.output_stride, width_mult=args.width_mult, input_size=args.size,
        )
        s = model_stats(model)
        print(f"{name:<12} {s.params / 1e6:>10.4f} {s.macs / 1e9:>8.4f} {s.head_params / 1e6:>16.4f} {s.head_macs / 1e9:>11.4f}")


def _model_entries(args: argparse.Namespace) -> list:
    """The --model values as `ModelEntry`s (`models.entry`: heads, head@backbone, specs, YAML mappings
    {source, args, weights}), with --model-arg KEY=VALUE and --weights applied to the one brought
    model they can belong to."""
    import dataclasses

    import yaml

    from .errors import ConfigError
    from .models import parse_models

    entries = parse_models(args.model or [], what="--model")
    extra_args = {}
    for item in args.model_arg or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--model-arg {item!r} is not KEY=VALUE (VALUE is read as YAML: 3, null, mobilenet_v2, [6, 12])")
        try:
            extra_args[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--model-arg {item!r}: VALUE is not YAML ({exc})") from exc
    if (extra_args or args.weights) and len(entries) != 1:
        raise ConfigError(f"--model-arg and --weights apply to exactly one --model; got {len(entries)} models "
                          "(give several models as YAML mappings: --model '{source: ..., args: {...}, weights: ...}')")
    if extra_args or args.weights:
        e = entries[0]
        if not e.brought:
            raise ConfigError(f"--model-arg and --weights belong to a brought model; {e.head!r} is a built-in head "
                              "(its settings are the recipe's model: section)")
        entries[0] = dataclasses.replace(e, args={**e.args, **extra_args}, weights=args.weights or e.weights)
    return entries


def _recipe(args: argparse.Namespace):
    """The --recipe, with its model replaced by the one --model names (train, quantize, export)."""
    from .config import load_recipe
    from .errors import ConfigError

    recipe = load_recipe(args.recipe)
    entries = _model_entries(args)
    if len(entries) > 1:
        raise ConfigError(f"{args.command} takes one --model; got {len(entries)} ({', '.join(e.key() for e in entries)}); "
                          "`aspp-edge run` compares several")
    return recipe.replace(model=entries[0].model_section()) if entries else recipe


def _float_checkpoint(args: argparse.Namespace, recipe) -> str:
    """--checkpoint, or, for --model without one, the model's weights as they are (epochs 0) saved as OUT/float.pt."""
    from .errors import ConfigError
    from .train import train

    if args.checkpoint:
        return args.checkpoint
    if not args.model:
        raise ConfigError(f"{args.command} needs --checkpoint (float.pt), or --model SPEC [--weights FILE] to use a model as it is")
    return str(train(recipe.replace(train={"epochs": 0}), args.out).checkpoint)


def _cmd_train(args: argparse.Namespace) -> None:
    from .train import train

    train(_recipe(args), args.out, resume=args.resume, device=args.device)


def _cmd_quantize(args: argparse.Namespace) -> None:
    from .quantize.job import quantize_checkpoint

    recipe = _recipe(args)
    keep_float = None if args.keep_float is None else ("auto" if args.keep_float == "auto" else tuple(
        n.strip() for n in args.keep_float.split(",") if n.strip()))
    r = quantize_checkpoint(
        recipe, _float_checkpoint(args, recipe), args.method, args.out, observer=args.observer, cle=args.cle,
        calib_size=args.calib_size, per_channel=args.per_channel, sensitivity=args.sensitivity, sensitivity_top=args.sensitivity_top,
        keep_float=keep_float, max_drop=args.max_drop, max_float_layers=args.max_float_layers,
    )
    if r.sensitivity is not None:
        print("layer sensitivity (alone int8: only this layer quantized; alone float: only this layer float; most sensitive first):")
        print(r.sensitivity.table())
        print()
    if r.float_layers or r.keep_float_auto is not None:
        auto = r.keep_float_auto
        how = (f"auto, max_drop {auto['max_drop']} points: {'met' if auto['met'] else 'NOT met'}" if auto else "keep_float list")
        print(f"float layers ({how}): {', '.join(r.float_layers) or '(none needed)'}")
    print("worst layers (cumulative SQNR of each quantized tensor vs float):")
    for row in r.worst_layers:
        print(f"  {row['tensor']:<28} {row['sqnr_db']:7.2f} dB  range [{row['min']:.3g}, {row['max']:.3g}]  scale {row['scale']:.3g}")
    if r.qat_selection:
        sel, checks = r.qat_selection, r.qat_selection["checks"]
        kept = " (no check clearly closer: the PTQ program)" if sel.get("program") == "ptq" else ""
        print("QAT checks (mIoU against the float model's classes on the calibration images, points): "
              + ", ".join(f"step {c['step']} {c['class_miou']:.2f}" for c in checks)
              + f"; returned step {sel['step']} ({sel['select']}){kept}")
    print(f"\n{r.method}: float mIoU {r.float_miou:.4f}  int8 mIoU {r.int8_miou:.4f}  drop {r.miou_drop_points:.2f} points")
    print(f"logits SQNR {r.sqnr_db:.2f} dB, argmax agreement {r.agreement:.4f}, {r.seconds:.0f} s -> {r.program}")
    if r.accuracy_note:
        print(f"note: drop and agreement are uninformative: {r.accuracy_note}.")


def _cmd_export(args: argparse.Namespace) -> None:
    from .export import export_backends, from_checkpoint, from_quantized
    from .errors import ConfigError
    from .formats import get_backend

    if not args.checkpoint and not args.quantized and not args.model:
        raise ConfigError("export needs --checkpoint (float.pt) and/or --quantized (NAME_int8.pt2), or --model SPEC [--weights FILE]")
    for b in args.backend.split(","):
        if b.strip():
            get_backend(b.strip())  # an unknown backend is refused before a model is built
    if args.for_apps:
        from .apps import check_app_root

        check_app_root(args.for_apps)
    if args.model:
        recipe = _recipe(args)
        source = from_checkpoint(_float_checkpoint(args, recipe), recipe)
    else:
        source = from_checkpoint(args.checkpoint) if args.checkpoint else None
    if args.quantized:
        source = from_quantized(args.quantized, source)
    written = export_backends(source, args.backend, args.precision, args.out, exact_precision=args.exact_precision,
                              layout=args.layout, io_dtype=args.io_dtype)
    for path in written:
        print(f"wrote {path}  (+ {path.name}.manifest.json)")
    if args.for_apps:
        from .apps import install_for_apps

        index = install_for_apps(written, args.for_apps, source.recipe)
        for backend, entry in index["artifacts"].items():
            print(f"apps: {entry['source_artifact']} -> {entry['file']} (+ manifest, {entry['expected_mask']})")


def _cmd_inspect(args: argparse.Namespace) -> None:
    import json

    from .export.inspect import format_inspection, inspect_artifact

    for path in args.artifacts:
        info = inspect_artifact(path)
        print(json.dumps(info, indent=2) if args.json else format_inspection(info))


def _cmd_run(args: argparse.Namespace) -> None:
    from .config import load_recipe
    from .evaluate.report import reference_line, table, uninformative_notes
    from .pipeline import run

    s = run(load_recipe(args.recipe), args.out, heads=args.heads, models=_model_entries(args) or None, backends=args.backends,
            methods=args.methods, threads=args.threads,
            runs=args.runs, peaks=not args.no_peaks, force=args.force, for_apps=args.for_apps, fp16=args.fp16,
            numerics_images=args.numerics_images, arm64=args.arm64)
    print(f"\nsummary: recipe {s.recipe}, float reference on {s.device}; "
          f"{s.stages_run} stages ran, {s.stages_reused} reused, {s.seconds:.0f} s")
    for head, ref in s.references.items():
        print(f"  float {reference_line(head, ref)}; {ref['params'] / 1e6:.2f} M params, {ref['gmacs']:.3f} GMACs")
    print("\n".join(table(s.rows, with_head=len(s.references) > 1)))
    for note in uninformative_notes(s.references):
        print(f"note: {note}")
    if s.deploy:
        from .evaluate.latency_table import per_model_table

        c = s.deploy["config"]
        print(f"\narchitecture latency at {c['size']}x{c['size']}, width {c['width']} (calibrated-only weights):")
        print("\n".join(per_model_table(s.deploy)))
    print(f"report: {s.report['report.md']}")


def _cmd_sweep(args: argparse.Namespace) -> None:
    from .pipeline import SweepConfig, sweep

    config = SweepConfig(models=args.models, backbone=args.backbone, size=args.size, width=args.width, classes=args.classes,
                         output_stride=args.output_stride, backends=args.backends, threads=args.threads, runs=args.runs,
                         warmup=args.warmup, head_channels=args.head_channels, calib_size=args.calib_size, recipe=args.recipe,
                         peaks=not args.no_peaks)
    result = sweep(config, args.out, force=args.force)
    print("\n" + result.summary)
    print(f"report: {result.paths['sweep.md']} (+ sweep.json, sweep.png)")


def _cmd_eval(args: argparse.Namespace) -> None:
    from .config import load_recipe
    from .evaluate.artifacts import eval_artifacts

    rows = eval_artifacts(args.artifacts, recipe=load_recipe(args.recipe) if args.recipe else None, reference=args.reference,
                          threads=args.threads)
    print(f"{'artifact':<48} {'mIoU':>7} {'drop pts':>8} {'agree':>7} {'non-maj':>7} {'SQNR dB':>8}  evaluated by")
    for r in rows:
        name = r["path"].rsplit("/", 1)[-1]
        if "miou" not in r:
            print(f"{name:<48} {'-':>7} {'-':>8} {'-':>7} {'-':>7} {'-':>8}  {r['evaluated_by']}")
            continue
        flag = "*" if r.get("accuracy_note") else " "  # measured against a one-class reference: said below
        minority = "-" if r["minority_agreement"] is None else f"{r['minority_agreement']:.4f}"
        print(f"{name:<48} {r['miou']:>7.4f} {r['miou_drop']:>7.2f}{flag} {r['agreement']:>6.4f}{flag} {minority:>7} {r['sqnr_db']:>8.1f}  "
              f"{r['evaluated_by']}")
    for ref in {r["reference"]: r for r in rows}.values():
        spread = ref["reference_spread"]
        print(f"reference: {ref['reference']} on {ref['reference_device']}, mIoU {ref['reference_miou']:.4f}, predicts "
              f"{spread['predicted_classes']} of {spread['classes']} classes, the most frequent ({spread['majority_class']}) on "
              f"{100 * spread['majority_share']:.1f}% of val pixels")
        if spread["note"]:
            print(f"* uninformative: {spread['note']}.")


def _cmd_compare(args: argparse.Namespace) -> None:
    from .config import load_recipe
    from .evaluate import numerics

    results = numerics.compare(args.artifacts, program=args.program, checkpoint=args.checkpoint,
                               recipe=load_recipe(args.recipe) if args.recipe else None, images=args.images)
    print(numerics.table(results, top=args.top))
    print()
    for line in numerics.summary_lines(results):
        print(line)
    for r in results:
        for note in r.notes:
            print(f"  {r.artifact.rsplit('/', 1)[-1]}: {note}")
    if args.json:
        numerics.write_json(results, args.json)
        print(f"json: {args.json}")


def _cmd_setup_arm64(args: argparse.Namespace) -> None:
    from .runtime.arm64 import ensure_env

    env, summary = ensure_env(args.cache)
    if not summary["built"]:
        print(f"the aarch64 environment is ready at {env.root} (nothing to do)")
        return
    print(f"the aarch64 environment is ready at {env.root}: built in {summary['seconds']:.0f} s, "
          f"{summary['downloaded_bytes'] / 1e6:.0f} MB downloaded (cached in {env.root.parent / 'downloads'}), "
          f"{summary['disk_bytes'] / 1e6:.0f} MB on disk")
    print("qemu CPU models: " + ", ".join(env.cpus()))


def _cmd_check_arm64(args: argparse.Namespace) -> None:
    from .config import load_recipe
    from .evaluate import arm64

    rows = arm64.check_arm64(args.artifacts, recipe=load_recipe(args.recipe) if args.recipe else None, checkpoint=args.checkpoint,
                             images=args.images, cpus=[c for c in args.cpu.split(",") if c], fp16=not args.no_fp16, cache=args.cache)
    print(arm64.table(rows))
    print()
    for line in arm64.summary_lines(rows):
        print(line)
    if args.json:
        arm64.write_json(rows, args.json, cache=args.cache)
        print(f"json: {args.json}")
    failed = [r for r in rows if not r.passed]
    if failed:
        raise AsppEdgeError(f"{len(failed)} of {len(rows)} aarch64 rows failed: "
                            + "; ".join(f"{r.artifact.rsplit('/', 1)[-1]} ({r.cpu}, {r.mode}): {r.failures[0]}" for r in failed[:3]))


def _cmd_bench_device(args: argparse.Namespace) -> None:
    import json

    from .evaluate.device import bench_device
    from .fileio import atomic_path

    if not args.adb:
        from .errors import ConfigError

        raise ConfigError("bench-device needs --adb (Android over adb is the one transport; iOS: see mobile_demo/README.md)")
    result = bench_device(args.artifacts, tflite_benchmark=args.tflite_benchmark, executorch_runner=args.executorch_runner,
                          adb=args.adb_path, serial=args.serial, threads=args.threads, runs=args.runs, warmup=args.warmup)
    d = result["device"]
    print(f"{d['model']} (Android {d['android']}, {d['abi']}, serial {d['serial']}), {args.threads} threads, {args.runs} runs")
    print(f"{'artifact':<48} {'mean ms':>8} {'median ms':>9} {'min ms':>8} {'init ms':>8} {'peak MB':>8}  tool")
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for r in result["artifacts"]:
        lat = r["latency_ms"]
        print(f"{Path(r['path']).name:<48} {fmt(lat['mean'], '8.2f'):>8} {fmt(lat['median'], '9.2f'):>9} {fmt(lat['min'], '8.2f'):>8} "
              f"{fmt(r['load_ms'], '8.0f'):>8} {fmt(r['peak_rss_mb'], '8.1f'):>8}  {r['evaluated_by']}")
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")


def _cmd_demo(args: argparse.Namespace) -> None:
    import statistics

    from .demo import legend, run_demo
    from .formats.manifest import read_manifest

    seg, paths = run_demo(args.artifact, args.image, args.out, mask_out=args.mask, runs=args.runs, threads=args.threads)
    h, w = seg.mask.shape
    print(f"{args.artifact}: {w}x{h} image, letterboxed to {seg.box.w}x{seg.box.h} at ({seg.box.x}, {seg.box.y}) of the model input")
    manifest = read_manifest(args.artifact)
    for cls, name, color, frac in legend(seg.mask, manifest["labels"], manifest["colors"]):
        print(f"  {cls:>3} {name:<16} {'rgb' + str(tuple(color)):<18} {100 * frac:5.1f}%")
    note = " (the reference interpreter: checks the program, not Core ML's speed)" if seg.evaluated_by == "mil-reference" else ""
    print(f"latency: median {statistics.median(seg.latency_ms):.2f} ms over {len(seg.latency_ms)} runs, {seg.evaluated_by}{note}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def _cmd_bench(args: argparse.Namespace) -> None:
    from .evaluate.latency import default_threads, measure
    from .runtime import check_artifact

    paths = [check_artifact(p) for p in args.artifacts]
    print(f"{args.runs} timed runs after {args.warmup} warm-up, {args.threads or default_threads()} threads, "
          "each artifact in its own process")
    print(f"{'artifact':<48} {'median ms':>9} {'p90 ms':>8} {'min ms':>8} {'load ms':>8} {'peak RSS MB':>11}  runtime")
    for path in paths:
        lat = measure(path, threads=args.threads, runs=args.runs, warmup=args.warmup, profile=args.profile)
        print(f"{path.name:<48} {lat.median_ms:>9.3f} {lat.p90_ms:>8.3f} {lat.min_ms:>8.3f} {lat.load_ms:>8.0f} "
              f"{lat.peak_rss_mb:>11.0f}  {lat.evaluated_by}")
        for kind, ms in list(lat.profile.items())[:6]:
            print(f"    {kind:<44} {ms:>9.3f} ms")


def _model_options(p: argparse.ArgumentParser, *, several: bool = False) -> None:
    p.add_argument("--model", action="append", default=None, metavar="SPEC",
                   help="the model instead of the recipe's: a brought model (torchvision:NAME, smp:ARCH or module.path:callable), "
                        "or a built-in HEAD or HEAD@BACKBONE"
                        + ("; repeat it, or comma-separate specs, to compare several (a YAML mapping "
                           "'{source: S, args: {...}, weights: F}' per model gives each its own arguments)" if several else ""))
    p.add_argument("--model-arg", action="append", default=None, metavar="KEY=VALUE",
                   help="keyword argument for the --model factory (VALUE read as YAML), e.g. encoder_name=mobilenet_v2")
    p.add_argument("--weights", default=None, metavar="FILE", help="state dict for the --model (loaded with weights_only=True)")


def _threads_option(p: argparse.ArgumentParser, what: str = "runtime threads") -> None:
    p.add_argument("--threads", type=int, default=None, help=f"{what} (default: all cores)")


def _backends_option(p: argparse.ArgumentParser, flag: str, default: str, *, all_: bool = True) -> None:
    names = ", ".join(b.name if b.default else f"{b.name} (opt-in)" for b in BACKENDS.values())
    p.add_argument(flag, default=default, help=(f"'all' ({', '.join(DEFAULT_BACKENDS)}) or " if all_ else "") + "comma-separated: " + names)


def _add_list(sub, fmt) -> None:
    p = sub.add_parser("list", help="list heads, backbones and decoders; --stats counts params and MACs", formatter_class=fmt)
    p.add_argument("--stats", action="store_true", help="build every head and count params and GMACs")
    p.add_argument("--size", type=int, default=512, help="input side for --stats")
    p.add_argument("--backbone", default="mobilenet_v2", help="backbone for --stats")
    p.add_argument("--decoder", default="deeplabv3plus", help="decoder for --stats")
    p.add_argument("--output-stride", type=int, default=16, help="output stride for --stats (8 or 16)")
    p.add_argument("--width-mult", type=float, default=1.0, help="backbone width multiplier for --stats")
    p.add_argument("--num-classes", type=int, default=21, help="classes for --stats")
    p.set_defaults(func=_cmd_list)


def _add_train(sub, fmt) -> None:
    p = sub.add_parser("train", help="train the float model of a recipe", formatter_class=fmt)
    p.add_argument("--recipe", default="default", help="built-in recipe name (quick, default) or a YAML path")
    p.add_argument("--out", required=True, help="output directory (last.pt, float.pt)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    _model_options(p)
    p.set_defaults(func=_cmd_train)


def _add_quantize(sub, fmt) -> None:
    p = sub.add_parser("quantize", help="int8 program from a float checkpoint (PTQ or QAT)", formatter_class=fmt)
    p.add_argument("--recipe", default="default", help="built-in recipe name or a YAML path (its ptq:/qat: sections)")
    p.add_argument("--checkpoint", default=None,
                   help="float checkpoint (float.pt); without it, --model is used as it is (saved as OUT/float.pt)")
    p.add_argument("--method", default="ptq", help=" or ".join(METHODS))
    p.add_argument("--observer", default=None, help="PTQ activation observer: " + ", ".join(OBSERVERS) + " (default: recipe)")
    p.add_argument("--cle", default=None, action=argparse.BooleanOptionalAction,
                   help="cross-layer equalization before PTQ (default: recipe)")
    p.add_argument("--per-channel", default=None, action=argparse.BooleanOptionalAction, help="per-channel weights (default: recipe)")
    p.add_argument("--calib-size", type=int, default=None, help="calibration images (default: recipe)")
    p.add_argument("--sensitivity", action="store_true",
                   help="measure each layer alone in int8 / alone in float (NAME_int8.sensitivity.json and a table)")
    p.add_argument("--sensitivity-top", type=int, default=5, help="layers whose val mIoU drop the sensitivity report measures")
    p.add_argument("--keep-float", default=None,
                   help="mixed precision: comma-separated layer names (as the sensitivity table prints them) or 'auto' (default: recipe)")
    p.add_argument("--max-drop", type=float, default=None, help="keep-float auto: val mIoU drop target in points (default: recipe)")
    p.add_argument("--max-float-layers", type=int, default=None, help="keep-float auto: at most this many float layers (default: recipe)")
    p.add_argument("--out", required=True, help="output directory for <name>_int8.pt2 and its reports")
    _model_options(p)
    p.set_defaults(func=_cmd_quantize)


def _add_export(sub, fmt) -> None:
    p = sub.add_parser("export", help="write .pte / .mlpackage / .tflite artifacts with manifests", formatter_class=fmt)
    p.add_argument("--checkpoint", default=None, help="float checkpoint (float.pt): fp32/fp16 artifacts")
    p.add_argument("--quantized", default=None, help="int8 program (NAME_int8.pt2 from `aspp-edge quantize`): int8 artifacts")
    _backends_option(p, "--backend", ",".join(DEFAULT_BACKENDS), all_=False)
    p.add_argument("--precision", default="fp32", help="; ".join(f"{b.name}: {', '.join(b.precisions)}" for b in BACKENDS.values())
                   + " (fp32 means each backend's float default: "
                   + ", ".join(f"{b.name} {b.float_precision}" for b in BACKENDS.values()) + ")")
    p.add_argument("--exact-precision", action="store_true", help="coreml: keep fp32 instead of its fp16 default for --precision fp32")
    p.add_argument("--layout", default="NHWC", help="tflite I/O layout: NHWC or NCHW")
    p.add_argument("--io-dtype", default="float32", help="tflite int8 I/O: float32 (QUANTIZE/DEQUANTIZE at I/O) or int8")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--for-apps", default=None, metavar="DIR",
                   help="also install the written artifacts into the demo apps under DIR (mobile_demo)")
    p.add_argument("--recipe", default="default", help="with --model: the recipe whose data (resolution, classes) the model takes")
    _model_options(p)
    p.set_defaults(func=_cmd_export)


def _add_inspect(sub, fmt) -> None:
    p = sub.add_parser("inspect", help="size, I/O, manifest and op histogram of artifacts", formatter_class=fmt)
    p.add_argument("artifacts", nargs="+", help=".pte, .tflite or .mlpackage files")
    p.add_argument("--json", action="store_true", help="print the full summary as JSON")
    p.set_defaults(func=_cmd_inspect)


def _add_run(sub, fmt) -> None:
    p = sub.add_parser("run", help="the end-to-end pipeline: train, quantize, export, evaluate, report", formatter_class=fmt)
    p.add_argument("--recipe", default="default", help="built-in recipe name (quick, default) or a YAML path")
    p.add_argument("--out", default="runs/default", help="output directory (re-running with it skips finished stages)")
    p.add_argument("--heads", default=None,
                   help="'all' (the ablation) or comma-separated heads (default: the recipe's model, or none when --model is given)")
    _backends_option(p, "--backends", "all")
    p.add_argument("--methods", default="all", help=f"'all' ({', '.join(METHODS)}) or comma-separated: {', '.join(RUN_METHODS)} "
                   "(mixed: PTQ with the most sensitive layers kept in float, ptq.keep_float or auto at ptq.max_drop, "
                   "default 0.1 points)")
    _threads_option(p, "runtime threads for evaluation and latency")
    p.add_argument("--runs", type=int, default=50, help="timed runs per artifact")
    p.add_argument("--no-peaks", action="store_true", help="skip the runtimes' 1x1-convolution throughput reference")
    p.add_argument("--force", action="store_true", help="run in an out dir that holds another recipe's run")
    p.add_argument("--for-apps", default=None, metavar="DIR",
                   help="install the best int8 artifact per backend into the demo apps under DIR (mobile_demo)")
    p.add_argument("--fp16", action="store_true",
                   help="also an fp16 artifact where a backend offers it beside another float default (tflite, executorch-vulkan)")
    p.add_argument("--numerics-images", type=int, default=8,
                   help="val images of each int8 artifact's per-layer comparison with its program (aspp-edge compare); 0: none")
    p.add_argument("--arm64", nargs="?", const="cortex-a76,cortex-a710", default=None, metavar="CPUS",
                   help="also run each .pte and .tflite on its aarch64 runtime under qemu (aspp-edge check-arm64) on these "
                        "CPU models, comma-separated (alone: cortex-a76,cortex-a710); needs `aspp-edge setup-arm64` once")
    _model_options(p, several=True)
    p.set_defaults(func=_cmd_run)


def _add_sweep(sub, fmt) -> None:
    p = sub.add_parser("sweep", help="deploy-size latency: every model x backend x fp32/int8, each timed in its own process",
                       formatter_class=fmt)
    p.add_argument("--models", default="sep_aspp,aspp,lraspp@mobilenet_v3_large,torchvision:lraspp_mobilenet_v3_large",
                   help="comma-separated: HEAD (on --backbone), HEAD@BACKBONE, 'all' (every head), or a brought model "
                        "(torchvision:NAME, smp:ARCH, module.path:callable)")
    p.add_argument("--backbone", default="mobilenet_v2", help="backbone of heads given without @BACKBONE")
    p.add_argument("--size", type=int, default=512, help="input side (a multiple of the output stride)")
    p.add_argument("--width", type=float, default=1.0, help="backbone width multiplier")
    p.add_argument("--classes", type=int, default=21, help="output classes (21: VOC's names)")
    p.add_argument("--output-stride", type=int, default=16, help="8 or 16")
    _backends_option(p, "--backends", "executorch,tflite,coreml")
    _threads_option(p)
    p.add_argument("--runs", type=int, default=20, help="timed runs per artifact")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    p.add_argument("--head-channels", type=int, default=None, help="ASPP channels (default: each head's own)")
    p.add_argument("--calib-size", type=int, default=8, help="synthetic calibration images (activation ranges only)")
    p.add_argument("--recipe", default="default", help="base recipe: normalization, synthetic data seed, PTQ observer")
    p.add_argument("--no-peaks", action="store_true", help="skip the runtimes' 1x1-convolution throughput reference")
    p.add_argument("--out", default="runs/sweep", help="output directory (re-running with it skips finished stages)")
    p.add_argument("--force", action="store_true", help="sweep into an out dir that holds a `run`")
    p.set_defaults(func=_cmd_sweep)


def _add_eval(sub, fmt) -> None:
    p = sub.add_parser("eval", help="accuracy of artifacts against their float reference on the val split", formatter_class=fmt)
    p.add_argument("artifacts", nargs="+", help=".pte, .tflite or .mlpackage files (with their manifests)")
    p.add_argument("--recipe", default=None, help="recipe whose val split to use (default: the one stored in the reference checkpoint)")
    p.add_argument("--reference", default=None, help="float checkpoint (default: the run's float.pt matching the manifest's sha256)")
    _threads_option(p)
    p.set_defaults(func=_cmd_eval)


def _add_compare(sub, fmt) -> None:
    p = sub.add_parser("compare", help="per-layer numerics of artifacts against their int8 program and the float model",
                       formatter_class=fmt)
    p.add_argument("artifacts", nargs="+", help=".pte, .tflite or .mlpackage files (with their manifests)")
    p.add_argument("--program", default=None, help="int8 program X_int8.pt2 to compare int8 artifacts against "
                   "(default: the one their manifest names, found beside them or in ../quant/)")
    p.add_argument("--checkpoint", default=None, help="float checkpoint (default: the run's float.pt matching the manifest's sha256)")
    p.add_argument("--recipe", default=None, help="recipe whose val images to use (default: the one stored in the checkpoint)")
    p.add_argument("--images", type=int, default=8, help="val images to run")
    p.add_argument("--top", type=int, default=None, help="print only the N worst layers")
    p.add_argument("--json", default=None, help="also write every layer's figures to this JSON file")
    p.set_defaults(func=_cmd_compare)


def _add_arm64(sub, fmt) -> None:
    p = sub.add_parser("setup-arm64", help="build the aarch64 environment check-arm64 runs in (qemu-user, an arm64 sysroot, "
                       "the aarch64 ExecuTorch and LiteRT builds): pinned downloads, once", formatter_class=fmt)
    p.add_argument("--cache", default=None, help="cache folder (default: $ASPP_EDGE_ARM64_CACHE, else ~/.cache/aspp-edge/arm64)")
    p.set_defaults(func=_cmd_setup_arm64)
    p = sub.add_parser("check-arm64", help="run .pte / .tflite artifacts on the aarch64 runtimes under qemu and compare them "
                       "with their x86 run and the float model", formatter_class=fmt)
    p.add_argument("artifacts", nargs="+", help=".pte and .tflite files (with their manifests)")
    p.add_argument("--recipe", default=None, help="recipe whose val images to use (default: the one stored in the checkpoint)")
    p.add_argument("--checkpoint", default=None, help="float checkpoint (default: the run's float.pt matching the manifest's sha256)")
    p.add_argument("--images", type=int, default=4, help="val images to run")
    p.add_argument("--cpu", default="cortex-a76,cortex-a710", help="qemu CPU models, comma-separated (cortex-a76: dot product "
                   "and fp16 arithmetic; cortex-a710: also i8mm)")
    p.add_argument("--no-fp16", action="store_true", help="do not also run float .tflite artifacts with XNNPACK's fp16 inference forced")
    p.add_argument("--cache", default=None, help="the aarch64 environment's cache folder (see setup-arm64)")
    p.add_argument("--json", default=None, help="also write the rows, kernels and provenance to this JSON file")
    p.set_defaults(func=_cmd_check_arm64)


def _add_bench(sub, fmt) -> None:
    p = sub.add_parser("bench", help="latency, load time and peak RSS of artifacts in their runtimes", formatter_class=fmt)
    p.add_argument("artifacts", nargs="+", help=".pte, .tflite or .mlpackage files (with their manifests)")
    _threads_option(p)
    p.add_argument("--runs", type=int, default=50, help="timed runs")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first")
    p.add_argument("--profile", action="store_true", help=".pte: ExecuTorch's per-operator times (ETDump), by operator kind")
    p.set_defaults(func=_cmd_bench)


def _add_bench_device(sub, fmt) -> None:
    p = sub.add_parser("bench-device", help="latency on an attached Android phone, in the runtimes' own benchmark binaries",
                       formatter_class=fmt)
    p.add_argument("artifacts", nargs="+", help=".pte and .tflite files (with their manifests)")
    p.add_argument("--adb", action="store_true", help="run on an Android device over adb (required)")
    p.add_argument("--serial", default=None, help="device serial when several are attached (see `adb devices`)")
    p.add_argument("--adb-path", default=None, help="adb executable (default: adb on PATH, else $ANDROID_HOME/platform-tools/adb)")
    p.add_argument("--tflite-benchmark", default=None, help="TFLite/LiteRT benchmark_model binary for the device's ABI (for .tflite)")
    p.add_argument("--executorch-runner", default=None, help="ExecuTorch executor_runner built for Android with XNNPACK (for .pte)")
    p.add_argument("--threads", type=int, default=4, help="CPU threads on the device")
    p.add_argument("--runs", type=int, default=50, help="timed runs")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (benchmark_model)")
    p.add_argument("--json", default=None, help="also write the rows (host report schema) to this JSON file")
    p.set_defaults(func=_cmd_bench_device)


def _add_demo(sub, fmt) -> None:
    p = sub.add_parser("demo", help="segment one image with an artifact: colour overlay, legend, latency", formatter_class=fmt)
    p.add_argument("artifact", help=".pte, .tflite or .mlpackage file (with its manifest)")
    p.add_argument("--image", required=True, help="PNG or JPEG of any size (RGB, RGBA or greyscale)")
    p.add_argument("--out", default="overlay.png", help="overlay PNG (the image's size); the legend goes to <stem>.legend.png")
    p.add_argument("--mask", default=None, help="also write the class-index mask as a greyscale PNG")
    p.add_argument("--runs", type=int, default=5, help="timed predictions (after one untimed)")
    _threads_option(p)
    p.set_defaults(func=_cmd_demo)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each default said once: an option whose help already names its default, or whose default is
    None or False (unset, or a flag), gets no "(default: ...)" appended."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default" in text or action.default is None or action.default is False:
            return text
        return super()._get_help_string(action)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    fmt = _HelpFormatter
    parser = argparse.ArgumentParser(prog="aspp-edge", description=__doc__, formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_list(sub, fmt)
    _add_train(sub, fmt)
    _add_quantize(sub, fmt)
    _add_export(sub, fmt)
    _add_inspect(sub, fmt)
    _add_run(sub, fmt)
    _add_sweep(sub, fmt)
    _add_eval(sub, fmt)
    _add_compare(sub, fmt)
    _add_arm64(sub, fmt)
    _add_bench(sub, fmt)
    _add_bench_device(sub, fmt)
    _add_demo(sub, fmt)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from .formats.backends import load_plugins

    try:
        load_plugins()  # backends registered from the user's package ($ASPP_EDGE_BACKENDS)
    except AsppEdgeError as exc:
        print(f"aspp-edge: error: {exc}", file=sys.stderr)
        return 2
    args = parse_args(argv)
    try:
        args.func(args)
    except AsppEdgeError as exc:
        print(f"aspp-edge: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
