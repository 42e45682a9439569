"""The sweep's report: `sweep.json` (checked against `sweep.schema.json`, beside this file), its
markdown, the one-screen summary and the latency-vs-GMACs plot."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..formats import BACKENDS
from .latency_table import OVERHEAD_GMACS, per_model_table, rows_table, separable_table, verdicts
from .plotting import PRECISION_COLORS, log_axes, marker, place_labels

SCHEMA_PATH = Path(__file__).with_name("sweep.schema.json")
SCHEMA_VERSION = 1


@cache
def _schema_file() -> str:
    return SCHEMA_PATH.read_text()


def schema() -> dict[str, Any]:
    """sweep.schema.json with its backend names taken from the backend registry as it is now (the
    file lists the built-in ones, for readers outside Python; a test holds them equal)."""
    doc = json.loads(_schema_file())
    doc["properties"]["config"]["properties"]["backends"]["items"]["enum"] = list(BACKENDS)
    doc["$defs"]["row"]["properties"]["backend"]["enum"] = list(BACKENDS)
    return doc


def validate(doc: dict[str, Any], where: str = "sweep.json") -> None:
    import jsonschema

    try:
        jsonschema.validate(doc, schema())
    except jsonschema.ValidationError as exc:
        path = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise ConfigError(f"{where} does not follow sweep.schema.json at {path}: {exc.message}") from exc


def markdown(doc: dict[str, Any]) -> str:
    c, m = doc["config"], doc["machine"]
    lines = [
        f"# aspp-edge sweep: {c['size']}x{c['size']}, width {c['width']}, output stride {c['output_stride']}, {c['classes']} classes", "",
        f"- command: `{doc['command']}`",
        f"- machine: {m['processor']}, {m['cpu_count']} cores, {m['platform']}; date {doc['date']}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in doc['versions'].items())}",
        f"- {doc['note']}; {c['runs']} timed runs after {c['warmup']} warm-up, threads {c['threads'] or 'all cores'}",
        f"- models under {OVERHEAD_GMACS} GMACs are dominated by fixed per-operator costs: their ratios say little about deploy size", "",
        "## Per model", "",
    ] + per_model_table(doc) + ["", "## Every artifact", ""] + rows_table(doc["rows"]) + [""]
    sep = separable_table(doc)
    if sep:
        lines += ["## Separable vs standard ASPP (same backbone)", ""] + sep + [""]
    if doc["runtime_peaks"]:
        lines += ["## Runtime throughput reference (four 256->256 1x1 convolutions at 64x64)", "",
                  "| runtime | GMAC/s | median ms | threads |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['gmacs_per_s']:.1f} | {v['median_ms']:.3f} | {v['threads']} |" for k, v in doc["runtime_peaks"].items()]
        lines.append("")
    lines += ["## Verdict", ""] + verdicts(doc) + [""]
    return "\n".join(lines)


def summary_text(doc: dict[str, Any], *, ran: int, reused: int, seconds: float) -> str:
    """One screen: the per-model table and the verdicts."""
    c = doc["config"]
    return "\n".join([f"sweep {c['size']}x{c['size']}, width {c['width']}, OS{c['output_stride']}, {c['classes']} classes: "
                      f"{len(doc['models'])} models, {len(doc['rows'])} artifacts; {ran} stages ran, {reused} reused, {seconds:.0f} s", ""]
                     + per_model_table(doc) + [""] + verdicts(doc))


def latency_png(rows: list[dict[str, Any]], path: Path, *, title: str) -> None:
    """Median latency vs GMACs, one marker per backend/precision, each model labelled once (no label overlaps another or a marker)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in rows if r.get("latency_ms")]
    fig, ax = plt.subplots(figsize=(10, 6.5), dpi=110)
    for (backend, precision) in dict.fromkeys((r["backend"], r["precision"]) for r in timed):
        pts = [r for r in timed if (r["backend"], r["precision"]) == (backend, precision)]
        ax.scatter([r["gmacs"] for r in pts], [r["latency_ms"]["median"] for r in pts], marker=marker(backend),
                   color=PRECISION_COLORS.get(precision, "k"), s=46, zorder=3, label=f"{backend} {precision}")
    if timed:
        log_axes(ax)
        ax.legend(fontsize=8, loc="upper left")
    ax.set(xlabel="GMACs per image", ylabel="median latency (ms, each artifact in its own process)")
    untimed = sorted({f"{r['backend']} {r['precision']}" for r in rows if not r.get("latency_ms")})
    ax.set_title(f"Latency vs GMACs ({title})" + (f"\nnot timed here: {', '.join(untimed)}" if untimed else ""), fontsize=10)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    # one label per model, beside its slowest artifact (the points of one model share its GMACs)
    slowest = {}
    for r in timed:
        if r["model"] not in slowest or r["latency_ms"]["median"] > slowest[r["model"]]["latency_ms"]["median"]:
            slowest[r["model"]] = r
    place_labels(ax, [(r["gmacs"], r["latency_ms"]["median"], key) for key, r in slowest.items()])
    fig.savefig(path, format="png")
    plt.close(fig)
