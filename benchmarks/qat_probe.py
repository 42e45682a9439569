"""QAT traced step by step: where the int8 program goes while it trains, and why (issue 37).

From one trained float checkpoint, QAT is run under several settings of the recipe's qat: section
(each a named variant below). Every `--every` optimizer steps the program as it stands (a copy in
inference mode: BN on its running statistics, observers and dropout off) is measured against the
float model on the val split: logits SQNR, argmax agreement and the int8 val mIoU. Beside them the
fake-quant ranges (mean |log2| ratio of every activation scale to its step-0 value) and the BN
running statistics (mean |log2| ratio of running_var to its step-0 value) show what moved. The PTQ
program of the recipe's ptq: section is measured the same way as the line QAT has to beat.

Prints a table per variant and writes OUT.json, OUT.md (command, machine, date, versions) and
OUT.png (the curves).

    python benchmarks/qat_probe.py --recipe benchmarks/qat_mnv3.yaml --checkpoint runs/qat_mnv3/lraspp/float/float.pt \\
        --out benchmarks/results/qat_probe_mnv3
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import time
from pathlib import Path

import torch
from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

from aspp_edge.calibration.calibrate import calibration_batches
from aspp_edge.checkpoint import load_model
from aspp_edge.config import load_recipe
from aspp_edge.data import build_dataset, calibration_dataset
from aspp_edge.evaluate.report import machine_line, provenance
from aspp_edge.fileio import write_text_atomic
from aspp_edge.metrics import sqnr_db
from aspp_edge.quantize import QuantizedModel, quantize
from aspp_edge.quantize.qat import pixel_kl, qat
from aspp_edge.metrics import evaluate_miou

# name -> overrides of the recipe's qat: section (None: the section as the recipe has it)
VARIANTS = {
    "recipe": {},
    "issue (ema ranges move, BN trains)": {"observer": "ema", "freeze_bn_step": None, "freeze_observer_step": None, "select": "last"},
    "BN trains": {"observer": "minmax", "freeze_bn_step": None, "freeze_observer_step": 0, "select": "last"},
    "ema ranges move": {"observer": "ema", "freeze_bn_step": 0, "freeze_observer_step": None, "select": "last"},
    "held, lr 1e-5": {"observer": "minmax", "freeze_bn_step": 0, "freeze_observer_step": 0, "select": "last", "lr": 1e-5},
    "held, lr 1e-4": {"observer": "minmax", "freeze_bn_step": 0, "freeze_observer_step": 0, "select": "last", "lr": 1e-4},
    "held, lr 1e-3": {"observer": "minmax", "freeze_bn_step": 0, "freeze_observer_step": 0, "select": "last", "lr": 1e-3},
    "recipe, lr 1e-3": {"lr": 1e-3},
    "learned weight ranges": {"weight_ranges": "learned"},
    "learned weight ranges, range lr 0.03": {"weight_ranges": "learned", "range_lr": 0.03},
}


def _bn_vars(gm: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in gm.named_buffers() if k.endswith("running_var")}


def _scales(gm: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.scale.detach().clone() for n, m in gm.named_modules()
            if isinstance(m, FakeQuantizeBase) and hasattr(m, "scale") and m.scale.numel() == 1}


def _log_ratio(now: dict[str, torch.Tensor], start: dict[str, torch.Tensor]) -> float:
    values = [(now[k].clamp_min(1e-12) / start[k].clamp_min(1e-12)).log2().abs().mean() for k in start if k in now]
    return float(torch.stack(values).mean()) if values else math.nan


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="OUT.json, OUT.md and OUT.png are written")
    p.add_argument("--every", type=int, default=5, help="measure every N steps")
    p.add_argument("--steps", type=int, default=None, help="override qat.steps")
    p.add_argument("--lr", type=float, default=None, help="override qat.lr")
    p.add_argument("--variants", default=None, help="semicolon-separated subset of: " + "; ".join(VARIANTS))
    p.add_argument("--per-tensor", action="store_true", help="per-tensor weights in PTQ and QAT (the recovery case)")
    args = p.parse_args()
    started = time.perf_counter()
    torch.set_num_threads(torch.get_num_threads())

    recipe = load_recipe(args.recipe)
    model, recipe, _ = load_model(args.checkpoint, recipe)
    model.eval()
    calib_set, split = calibration_dataset(recipe)
    calib = calibration_batches(calib_set, recipe.ptq.calib_size, recipe.ptq.batch_size, seed=recipe.ptq.seed, split=split)
    train_set, val = build_dataset(recipe, "train"), build_dataset(recipe, "val")
    images = torch.stack([val[i][0] for i in range(len(val))])
    with torch.no_grad():
        reference = model(images)
    float_miou = evaluate_miou(model, val, torch.device("cpu"), 16)

    def measure(program: torch.nn.Module) -> dict[str, float]:
        with torch.no_grad():
            out = program(images)
        return {"kl": pixel_kl(out, reference), "sqnr_db": sqnr_db(reference, out),
                "agreement": float((out.argmax(1) == reference.argmax(1)).float().mean()),
                "miou_drop": 100 * (float_miou - evaluate_miou(program, val, torch.device("cpu"), 16))}

    per_channel = not args.per_tensor
    ptq_config = dataclasses.replace(recipe.ptq, per_channel=per_channel)
    ptq_row = measure(quantize(model, ptq_config, calibration=calib).convert())
    print(f"float val mIoU {float_miou:.4f}; PTQ ({ptq_config.observer}, {'per-channel' if per_channel else 'per-tensor'}): "
          f"SQNR {ptq_row['sqnr_db']:.2f} dB, agreement {ptq_row['agreement']:.4f}, drop {ptq_row['miou_drop']:.2f} points")

    names = list(VARIANTS) if args.variants is None else [n.strip() for n in args.variants.split(";")]
    results = {}
    for name in names:
        overrides = {k: v for k, v in VARIANTS[name].items()}
        overrides["per_channel"] = per_channel
        if args.steps is not None:
            overrides["steps"] = args.steps
        if args.lr is not None and "lr" not in VARIANTS[name]:
            overrides["lr"] = args.lr
        config = dataclasses.replace(recipe.qat, **overrides)
        rows, start = [], {}

        def on_check(step: int, program: torch.nn.Module) -> None:
            if step == 0:
                start["bn"], start["scales"] = _bn_vars(program), _scales(program)
            row = {"step": step, **measure(program), "range_shift": _log_ratio(_scales(program), start["scales"]),
                   "bn_var_shift": _log_ratio(_bn_vars(program), start["bn"])}
            rows.append(row)

        t0 = time.perf_counter()
        prepared = qat(model, config, train_set, calib, on_check=on_check, check_every=args.every)
        final = measure(QuantizedModel(prepared, config, calib[0][:1]).convert())
        results[name] = {"config": config.to_dict(), "trace": rows, "final": final, "seconds": time.perf_counter() - t0,
                         "selected_step": prepared.meta.get("qat_selection", {}).get("step")}
        print(f"\n{name}: steps {config.steps}, lr {config.lr}, observer {config.observer}, BN held from step "
              f"{config.bn_freeze_at}, ranges from step {config.observer_freeze_at}, select {config.select}")
        print(f"{'step':>5} {'KL':>7} {'SQNR dB':>8} {'agree':>7} {'drop':>6} {'ranges':>7} {'BN var':>7}")
        for r in rows:
            print(f"{r['step']:>5} {r['kl']:>7.4f} {r['sqnr_db']:>8.2f} {r['agreement']:>7.4f} {r['miou_drop']:>6.2f} "
                  f"{r['range_shift']:>7.3f} {r['bn_var_shift']:>7.3f}")
        print(f"final (converted): SQNR {final['sqnr_db']:.2f} dB, agreement {final['agreement']:.4f}, "
              f"drop {final['miou_drop']:.2f} points (selected step {results[name]['selected_step']})")

    command = "python benchmarks/qat_probe.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" if not isinstance(v, bool) else f"--{k.replace('_', '-')}"
        for k, v in vars(args).items() if v not in (None, False))
    made = provenance()
    payload = {"command": command, "machine": machine_line(), "date": time.strftime("%Y-%m-%d"), "git": made["git"], "versions": made["versions"],
               "float_miou": float_miou, "ptq": ptq_row, "per_channel": per_channel, "variants": results,
               "seconds": time.perf_counter() - started}
    out = Path(args.out)
    write_text_atomic(out.with_suffix(".json"), json.dumps(payload, indent=2))
    write_text_atomic(out.with_suffix(".md"), _markdown(payload))
    _plot(payload, out.with_suffix(".png"))
    print(f"\nwrote {out}.json/.md/.png in {payload['seconds']:.0f} s")


def _markdown(payload: dict) -> str:
    lines = [f"# QAT traced step by step ({'per-channel' if payload['per_channel'] else 'per-tensor'} weights)", "",
             f"Command: `{payload['command']}`", "", f"Machine: {payload['machine']}; date {payload['date']}; code {payload.get('git') or 'not a git checkout'}; one run per "
             f"variant; versions: {', '.join(f'{k} {v}' for k, v in _versions(payload).items())}", "",
             f"Float val mIoU {payload['float_miou']:.4f}. PTQ: SQNR {payload['ptq']['sqnr_db']:.2f} dB, agreement "
             f"{payload['ptq']['agreement']:.4f}, mIoU drop {payload['ptq']['miou_drop']:.2f} points (val, PyTorch Q/DQ program).", "",
             "Each row: the program at that step in inference mode against the float model on val. `ranges`: mean |log2| ratio "
             "of the activation scales to step 0's; `BN var`: the same for the BN running variances.", ""]
    has_kl = all("kl" in r for v in payload["variants"].values() for r in v["trace"])
    for name, v in payload["variants"].items():
        c = v["config"]
        lines += [f"## {name}", "", f"steps {c['steps']}, lr {c['lr']}, observer {c['observer']}, freeze_bn_step "
                  f"{c['freeze_bn_step']}, freeze_observer_step {c['freeze_observer_step']}, distill {c['distill']}, select "
                  f"{c['select']}", "", "| step |" + (" KL |" if has_kl else "") + " SQNR dB | agreement | mIoU drop | ranges | BN var |",
                  "|---:|" + ("---:|" if has_kl else "") + "---:|---:|---:|---:|---:|"]
        lines += [f"| {r['step']} |" + (f" {r['kl']:.4f} |" if has_kl else "") + f" {r['sqnr_db']:.2f} | {r['agreement']:.4f} | {r['miou_drop']:.2f} | {r['range_shift']:.3f} | "
                  f"{r['bn_var_shift']:.3f} |" for r in v["trace"]]
        f = v["final"]
        lines += ["", f"Converted program: SQNR {f['sqnr_db']:.2f} dB, agreement {f['agreement']:.4f}, drop {f['miou_drop']:.2f} "
                  f"points; selected step {v['selected_step']}; {v['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def _versions(payload: dict) -> dict:
    versions = payload["versions"]
    return versions.get("versions", versions) if isinstance(versions, dict) else {}  # older files kept all of provenance()


def _plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("sqnr_db", "agreement", "miou_drop", "bn_var_shift")
    titles = ("logits SQNR vs float (dB)", "agreement with float", "val mIoU drop (points)", "BN running_var shift (mean |log2|)")
    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    for name, v in payload["variants"].items():
        steps = [r["step"] for r in v["trace"]]
        for ax, key in zip(axes, keys):
            ax.plot(steps, [r[key] for r in v["trace"]], marker=".", label=name)
    for ax, key, title in zip(axes, keys, titles):
        if key in payload["ptq"]:
            ax.axhline(payload["ptq"][key], color="k", linestyle="--", label="PTQ")
        ax.set_title(title)
        ax.set_xlabel("QAT step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    with open(path, "wb") as fh:  # written whole; a failed plot leaves the json/md
        fig.savefig(fh, format="png", dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
