"""Summaries, tables and plots for ``lopinfer bench``.

The runner produces one plain dict per measured inference (a *record*: model, method,
scenario, rate_Bps, rep, latency_s, bytes_up, bytes_down (raw), wire_up, wire_down (on the
wire: after LZ4, headers included), energy_j, predicted_s, bound_s,
sequential_s, plan, fell_back, timeline). This module turns records into one summary *row*
per (model, scenario, method) and writes CSV, JSON, PNG plots and a plain-text table.

Percentiles use linear interpolation between closest ranks (NumPy's default, the same as
``statistics.quantiles(method="inclusive")``); the median is the 50th percentile, so for an
even count it is the mean of the two middle values. Everything but the plots is stdlib
only; matplotlib (the ``bench`` extra) is imported when a plot is drawn.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError

__all__ = [
    "COLUMNS",
    "percentile",
    "summarise",
    "write_csv",
    "write_json",
    "plot_latency_bars",
    "plot_gantt",
    "plot_latency_vs_bandwidth",
    "table",
    "write_all",
]

# Order of the summary row fields, also the CSV header.
COLUMNS = (
    "model", "scenario", "method", "n", "rate_Bps", "p50_s", "p95_s",
    "mean_bytes_up", "mean_bytes_down", "mean_wire_up", "mean_wire_down", "energy_j",
    "predicted_s", "bound_s", "sequential_s", "limit_s", "x_limit", "pred_error", "overlap_eff", "fell_back", "plan",
    "speedup_vs_best_other", "tcp_retrans", "tcp_timeouts",
)

_GANTT_ROWS = ("client", "link-up", "server", "link-down")
_KIND_COLOURS = {"tile": "tab:blue", "whole": "tab:purple", "gather": "tab:olive",
                 "transfer": "tab:orange"}


def percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile (0 <= q <= 1) of ``values`` by linear interpolation.

    Position ``(n - 1) * q`` in the sorted values, interpolated between its neighbours, so
    ``q=0`` is the minimum and ``q=1`` the maximum. Raises ``ValueError`` on no values.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} outside [0, 1]")
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _median(values: list[Any]) -> float | None:
    # Optional fields (predicted_s, bound_s, ...) are None for methods without a model;
    # summarise what is there rather than poisoning the whole row.
    present = [float(v) for v in values if v is not None]
    return percentile(present, 0.5) if present else None


def _mean(values: list[Any]) -> float | None:
    present = [float(v) for v in values if v is not None]  # older records have no wire bytes
    return sum(present) / len(present) if present else None


def summarise(records: list[dict]) -> list[dict]:
    """One summary row per (model, scenario, method), in first-seen order.

    Each row holds the fields of :data:`COLUMNS`: ``n``; ``p50_s`` and ``p95_s`` latency
    (see :func:`percentile`); mean bytes up and down; medians of ``rate_Bps``, energy,
    predicted, bound and sequential time (None where no record has the field);
    ``pred_error`` = (predicted − p50) / p50; ``overlap_eff`` = (T_seq − p50) /
    (T_seq − T_bound) on medians, None when T_seq <= T_bound (nothing to overlap) or either
    is missing, and not clamped, so a run slower than sequential shows negative;
    ``fell_back`` count; ``plan`` the most frequent plan name (first seen wins a tie);
    ``speedup_vs_best_other`` = the lowest p50 of the *other* methods on the same model and
    scenario / this p50 (> 1: this method beats all others), None when it has no rival;
    ``tcp_retrans`` and ``tcp_timeouts``: TCP segments retransmitted and retransmission
    timeouts over the rows' inferences, both directions (``bench.tcpstats``; None where
    no record counted them).
    Raises ``ValueError`` if there are no records or a record lacks a latency.
    """
    if not records:
        raise ValueError("no records to summarise")
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in records:
        if r.get("latency_s") is None:
            raise ValueError(f"record without latency_s: {r.get('model')}/{r.get('method')}")
        groups.setdefault((r["model"], r["scenario"], r["method"]), []).append(r)

    rows: list[dict[str, Any]] = []
    for (model, scenario, method), rs in groups.items():
        lat = [float(r["latency_s"]) for r in rs]
        p50 = percentile(lat, 0.5)
        pred = _median([r.get("predicted_s") for r in rs])
        bound = _median([r.get("bound_s") for r in rs])
        limit = _median([r.get("limit_s") for r in rs])
        seq = _median([r.get("sequential_s") for r in rs])
        overlap = None
        if seq is not None and bound is not None and seq > bound:
            overlap = (seq - p50) / (seq - bound)
        plans = Counter(r.get("plan") for r in rs if r.get("plan") is not None)
        rows.append({
            "model": model, "scenario": scenario, "method": method, "n": len(rs),
            "rate_Bps": _median([r.get("rate_Bps") for r in rs]),
            "p50_s": p50, "p95_s": percentile(lat, 0.95),
            "mean_bytes_up": sum(int(r.get("bytes_up") or 0) for r in rs) / len(rs),
            "mean_bytes_down": sum(int(r.get("bytes_down") or 0) for r in rs) / len(rs),
            "mean_wire_up": _mean([r.get("wire_up") for r in rs]),
            "mean_wire_down": _mean([r.get("wire_down") for r in rs]),
            "energy_j": _median([r.get("energy_j") for r in rs]),
            "predicted_s": pred, "bound_s": bound, "sequential_s": seq,
            "limit_s": limit, "x_limit": p50 / limit if limit else None,
            "pred_error": (pred - p50) / p50 if pred is not None and p50 > 0 else None,
            "overlap_eff": overlap,
            "fell_back": sum(1 for r in rs if r.get("fell_back")),
            "plan": plans.most_common(1)[0][0] if plans else None,
            "speedup_vs_best_other": None,
            "tcp_retrans": _tcp_total(rs, "RetransSegs"),
            "tcp_timeouts": _tcp_total(rs, "TCPTimeouts"),
        })

    for row in rows:
        cell = [o for o in rows if o["model"] == row["model"] and o["scenario"] == row["scenario"]]
        others = [o["p50_s"] for o in cell if o is not row]
        if others and row["p50_s"] > 0:
            row["speedup_vs_best_other"] = min(others) / row["p50_s"]
        # one limit per cell: a record's limit is capped by its own plan's bound, and
        # every plan measured in the cell is a plan the limit is a lower bound for
        limits = [o["limit_s"] for o in cell if o["limit_s"]]
        if limits:
            row["limit_s"] = min(limits)
            row["x_limit"] = row["p50_s"] / row["limit_s"]
    return rows


def write_csv(rows: list[dict], path: str | Path) -> Path:
    """Write summary rows as CSV with the :data:`COLUMNS` header; None becomes empty."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})
    return path


def write_json(records: list[dict], rows: list[dict], meta: dict, path: str | Path) -> Path:
    """Write ``{"meta", "summary", "records"}`` as JSON (objects it cannot encode, e.g.
    paths, are written as strings) and return the path."""
    path = Path(path)
    doc = {"meta": meta, "summary": rows, "records": records}
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")
    return path


def _figure(nplots: int, *, sharex: bool = False, rows: bool = False,
            size: tuple[float, float] = (5.0, 3.6)) -> tuple[Any, list[Any]]:
    """A matplotlib Figure with ``nplots`` axes side by side (or stacked if ``rows``).

    Uses the Figure API with an Agg canvas rather than pyplot: no global backend switch,
    no figure registry to leak, safe next to a caller's own interactive plots.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError("matplotlib", "bench", "bench plots") from exc
    w, h = size
    shape = (nplots, 1) if rows else (1, nplots)
    fig = Figure(figsize=(w * shape[1], h * shape[0]), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(*shape, sharex=sharex, squeeze=False).ravel().tolist()
    return fig, axes


def _unique(values: Any) -> list:
    return list(dict.fromkeys(values))


def plot_latency_bars(rows: list[dict], path: str | Path) -> Path:
    """Bar chart of p50 latency (ms) with a whisker up to p95: one subplot per scenario,
    bars grouped per model, one bar (colour) per method. Raises ``ValueError`` on no rows
    and :class:`MissingDependencyError` without matplotlib."""
    if not rows:
        raise ValueError("no rows to plot")
    scenarios = _unique(r["scenario"] for r in rows)
    methods = _unique(r["method"] for r in rows)  # same colour per method in every subplot
    groups = max(len({r["model"] for r in rows if r["scenario"] == s}) for s in scenarios)
    fig, axes = _figure(len(scenarios), size=(max(4.0, 0.5 * groups * len(methods)), 3.6))
    legend: dict[str, Any] = {}
    for ax, scenario in zip(axes, scenarios):
        here = [r for r in rows if r["scenario"] == scenario]
        models = _unique(r["model"] for r in here)
        for i, model in enumerate(models):
            # Bars of the methods that ran, centred on the model's tick: no gaps for absent ones.
            group = sorted((r for r in here if r["model"] == model),
                           key=lambda r: methods.index(r["method"]))
            width = 0.8 / len(group)
            for k, r in enumerate(group):
                bar = ax.bar(i + (k - (len(group) - 1) / 2) * width, r["p50_s"] * 1e3, width,
                             yerr=[[0.0], [(r["p95_s"] - r["p50_s"]) * 1e3]], capsize=2,
                             color=f"C{methods.index(r['method'])}")
                legend.setdefault(r["method"], bar)
        ax.set_xticks(range(len(models)), models)
        ax.set_title(scenario)
        ax.set_ylabel("latency p50 (ms), whisker p95")
    legend = {m: legend[m] for m in methods}
    fig.legend(list(legend.values()), list(legend), loc="outside upper center",
               ncols=min(len(methods), 6))
    fig.savefig(Path(path), dpi=110)
    return Path(path)


def _median_record(rs: list[dict]) -> dict:
    # The lower-middle record by latency: an inference that actually ran, not an average.
    return sorted(rs, key=lambda r: r["latency_s"])[(len(rs) - 1) // 2]


def plot_gantt(records: list[dict], path: str | Path, model: str, scenario: str) -> Path:
    """Gantt timeline of the median-latency inference of each method on ``model`` in
    ``scenario``: rows client / link-up / server / link-down, one stacked subplot per
    method on a shared time axis (ms), spans coloured by kind. Raises ``ValueError`` if
    there is no such record and :class:`MissingDependencyError` without matplotlib."""
    picked = [r for r in records if r["model"] == model and r["scenario"] == scenario]
    if not picked:
        raise ValueError(f"no records for model {model!r} in scenario {scenario!r}")
    methods = _unique(r["method"] for r in picked)
    fig, axes = _figure(len(methods), sharex=True, rows=True, size=(9.0, 1.7))
    seen_kinds: dict[str, Any] = {}
    for ax, method in zip(axes, methods):
        rec = _median_record([r for r in picked if r["method"] == method])
        # One broken_barh per (peer, kind): a tiled plan has hundreds of spans.
        spans: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for s in rec.get("timeline") or ():
            if s["peer"] in _GANTT_ROWS:
                spans.setdefault((s["peer"], s["kind"]), []).append(
                    (s["start"] * 1e3, (s["end"] - s["start"]) * 1e3))
        for (peer, kind), xr in spans.items():
            y = _GANTT_ROWS.index(peer)
            bar = ax.broken_barh(xr, (y - 0.4, 0.8), facecolors=_KIND_COLOURS.get(kind, "tab:gray"),
                                 edgecolor="white", linewidth=0.3)
            seen_kinds.setdefault(kind, bar)
        ax.axvline(rec["latency_s"] * 1e3, color="black", linewidth=0.8, linestyle="--")
        ax.set_yticks(range(len(_GANTT_ROWS)), _GANTT_ROWS)
        ax.set_ylim(len(_GANTT_ROWS) - 0.5, -0.5)  # client on top
        note = "" if rec.get("timeline") else " (no timeline recorded)"
        ax.set_title(f"{method}: {rec['latency_s'] * 1e3:.1f} ms, plan {rec.get('plan')}{note}",
                     fontsize=9, loc="left")
    axes[-1].set_xlabel("time since inference start (ms); dashed: measured latency")
    if seen_kinds:
        fig.legend(list(seen_kinds.values()), list(seen_kinds), loc="outside lower center",
                   ncols=len(seen_kinds))
    fig.suptitle(f"{model} / {scenario}", fontsize=10)
    fig.savefig(Path(path), dpi=110)
    return Path(path)


def _is_fixed(row: dict) -> bool:
    # Only fixed-rate scenarios have one meaningful rate; traces vary it over time.
    return str(row["scenario"]).startswith("fixed:") and row.get("rate_Bps") is not None


def plot_latency_vs_bandwidth(rows: list[dict], path: str | Path) -> Path:
    """p50 latency (ms) against link rate (MB/s, 1 MB = 10^6 bytes, log scale) for the
    fixed-rate scenarios (``fixed:...``): one subplot per model, one line per method.
    Raises ``ValueError`` if no row is fixed-rate and :class:`MissingDependencyError`
    without matplotlib."""
    fixed = [r for r in rows if _is_fixed(r)]
    if not fixed:
        raise ValueError("no fixed-rate scenarios to plot against bandwidth")
    models = _unique(r["model"] for r in fixed)
    methods = _unique(r["method"] for r in rows)  # colours stable across plots
    fig, axes = _figure(len(models))
    for ax, model in zip(axes, models):
        for j, method in enumerate(methods):
            pts = sorted((r["rate_Bps"] / 1e6, r["p50_s"] * 1e3) for r in fixed
                         if r["model"] == model and r["method"] == method)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=method, color=f"C{j}")
        ax.set_xscale("log")
        rates = sorted({r["rate_Bps"] / 1e6 for r in fixed if r["model"] == model})
        ax.set_xticks(rates, [f"{x:g}" for x in rates])  # plain numbers, not 10^k
        ax.minorticks_off()
        ax.set_xlabel("link rate (MB/s)")
        ax.set_ylabel("latency p50 (ms)")
        ax.set_title(model)
        ax.legend(fontsize=8)
    fig.savefig(Path(path), dpi=110)
    return Path(path)


def _fmt(v: Any, scale: float = 1.0, digits: int = 2, suffix: str = "") -> str:
    return "-" if v is None else f"{v * scale:.{digits}f}{suffix}"


def _tcp_total(records: list[dict], name: str) -> int | None:
    counted = [r[side] for r in records for side in ("tcp_up", "tcp_down") if r.get(side)]
    return sum(int(c.get(name, 0)) for c in counted) if counted else None


def table(rows: list[dict]) -> str:
    """A plain-text table of the rows, sorted by model, scenario, then p50; columns padded
    to their widest cell, numbers right-aligned, None shown as ``-``."""
    head = ("model", "scenario", "method", "p50 ms", "p95 ms", "raw MB up", "raw MB down",
            "wire MB up", "wire MB down", "energy J", "pred ms", "bound ms", "limit ms", "x limit", "overlap eff",
            "speedup vs best other", "retrans/RTOs")
    body = [
        (r["model"], r["scenario"], r["method"], _fmt(r["p50_s"], 1e3), _fmt(r["p95_s"], 1e3),
         _fmt(r["mean_bytes_up"], 1e-6, 3), _fmt(r["mean_bytes_down"], 1e-6, 3),
         _fmt(r.get("mean_wire_up"), 1e-6, 3), _fmt(r.get("mean_wire_down"), 1e-6, 3),
         _fmt(r["energy_j"], digits=3), _fmt(r["predicted_s"], 1e3), _fmt(r["bound_s"], 1e3),
         _fmt(r.get("limit_s"), 1e3), _fmt(r.get("x_limit"), suffix="x"),
         _fmt(r["overlap_eff"]), _fmt(r["speedup_vs_best_other"], suffix="x"),
         "-" if r.get("tcp_retrans") is None else f"{r['tcp_retrans']}/{r.get('tcp_timeouts')}")
        for r in sorted(rows, key=lambda r: (r["model"], r["scenario"], r["p50_s"]))
    ]
    widths = [max(len(c[i]) for c in [head, *body]) for i in range(len(head))]

    def line(cells: tuple) -> str:
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(head), "  ".join("-" * w for w in widths), *map(line, body)])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def write_all(records: list[dict], meta: dict, out_dir: str | Path,
              plots: bool = True) -> dict[str, Path]:
    """Write ``summary.csv``, ``results.json``, ``table.txt`` and, if ``plots``,
    ``latency_bars.png``, ``latency_vs_bandwidth.png`` (only with fixed-rate scenarios) and
    ``gantt_<model>_<scenario>.png`` for each pair into ``out_dir`` (created if missing).

    Returns ``{name: path}`` with names ``csv``, ``json``, ``table``, ``latency_bars``,
    ``latency_vs_bandwidth``, ``gantt:<model>:<scenario>``. The text files are written
    first, so a missing matplotlib (:class:`MissingDependencyError`) loses no data.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = summarise(records)
    written = {
        "csv": write_csv(rows, out / "summary.csv"),
        "json": write_json(records, rows, meta, out / "results.json"),
    }
    (out / "table.txt").write_text(table(rows) + "\n", encoding="utf-8")
    written["table"] = out / "table.txt"
    if not plots:
        return written
    written["latency_bars"] = plot_latency_bars(rows, out / "latency_bars.png")
    if any(_is_fixed(r) for r in rows):
        written["latency_vs_bandwidth"] = plot_latency_vs_bandwidth(
            rows, out / "latency_vs_bandwidth.png")
    for model, scenario in _unique((r["model"], r["scenario"]) for r in rows):
        written[f"gantt:{model}:{scenario}"] = plot_gantt(
            records, out / f"gantt_{_slug(model)}_{_slug(scenario)}.png", model, scenario)
    return written
