"""The report folder of `tidal demo`: report.json, plots, and an index.html that shows them.

    report.json            the figures (see README, "The demo")
    latency_cdf.png        stream latency CDF of every policy and of the stream alone
    timeline-NAME.png      per executor, when each task ran, was suspended and resumed
    events-NAME.jsonl      the scheduler's event log each timeline is drawn from
    index.html             all of it on one page

Plots need matplotlib (`pip install "tidal[demo]"`); without it the report still has the
figures, the event logs and the page, which says how to get the plots.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tidal.runtime.timeline import PlottingUnavailable, new_figure, plot_timeline
from tidal.scheduler.eventlog import read_events

__all__ = ["plot_latency_cdf", "summary_table", "write_report"]

CDF_FILE = "latency_cdf.png"


def write_report(out: Path, result: dict[str, Any], runs: Mapping[str, Any]) -> Path:
    """Write the folder for `result` (demo.summarize) and `runs` (name -> PolicyRun);
    return the path of index.html."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    images: list[tuple[str, str]] = []
    note = ""
    try:
        plot_latency_cdf({name: run.latencies_ms for name, run in runs.items()}, out / CDF_FILE)
        images.append(("Stream latency, every policy", CDF_FILE))
        for name, run in runs.items():
            if run.event_log and Path(run.event_log).exists():
                image = f"timeline-{name}.png"
                plot_timeline(
                    read_events(run.event_log), out / image, title=f"Timeline under {name}"
                )
                images.append((f"Timeline: {name}", image))
    except PlottingUnavailable as exc:  # its message says how to install matplotlib
        note = f"No plots: {exc}"
    index = out / "index.html"
    index.write_text(_page(result, images, note))
    return index


def plot_latency_cdf(latencies: Mapping[str, list[float]], path: Path) -> None:
    """One CDF line per run, log-scaled milliseconds, so 5 ms and 500 ms both read well."""
    figure = new_figure(figsize=(8, 4.5), dpi=110)
    axes = figure.add_subplot()
    for name, values in latencies.items():
        if not values:
            continue
        ordered = sorted(values)
        fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
        style = "--" if name == "stream-alone" else "-"
        axes.step(ordered, fractions, style, where="post", label=name, linewidth=1.6)
    axes.set_xscale("log")
    axes.set_xlabel("stream micro-batch latency, submit to result (ms, log scale)")
    axes.set_ylabel("fraction of micro-batches")
    axes.axhline(0.99, color="grey", linewidth=0.6, linestyle=":")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right")
    axes.set_title("Stream latency while the batch job trains")
    figure.tight_layout()
    figure.savefig(path)


def _page(result: dict[str, Any], images: list[tuple[str, str]], note: str) -> str:
    columns, cells = summary_table(result)
    rows = [_row(row) for row in cells]
    targets = "".join(
        f"<li>{html.escape(t['target'])}: {t['ratio']:.3f} "
        f"<b class={'met' if t['met'] else 'missed'}>{'met' if t['met'] else 'missed'}</b></li>"
        for t in result["targets"]
    )
    checks = "".join(
        f"<li>{html.escape(name.replace('_', ' '))}: {'yes' if ok else '<b class=missed>NO</b>'}"
        "</li>"
        for name, ok in result["checks"].items()
    )
    figures = "".join(
        f"<figure><img src='{html.escape(src)}' alt='{html.escape(title)}'>"
        f"<figcaption>{html.escape(title)}</figcaption></figure>"
        for title, src in images
    )
    config = html.escape(json.dumps(result["config"]))
    header = _row(list(columns), cell="th")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Tidal demo report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 0.3em 0.8em; text-align: right; }}
tr:nth-child(even) {{ background: #f3f3f3; }} .met {{ color: #080; }} .missed {{ color: #b00; }}
img {{ max-width: 100%; border: 1px solid #ddd; }} code {{ font-size: 0.85em; }}
</style></head><body>
<h1>Tidal demo: a stream job beside a batch job, per policy</h1>
<p>Stream latency is from a micro-batch's submission to its result, in milliseconds; batch
throughput is documents resampled per second over the training's makespan.</p>
<table>{header}{"".join(rows)}</table>
<h2>Targets</h2><ul>{targets}</ul>
<h2>Checks</h2><ul>{checks}</ul>
{f"<p class=missed>{html.escape(note)}</p>" if note else ""}
{figures}
<h2>Configuration</h2><p><code>{config}</code></p>
</body></html>
"""


SUMMARY_COLUMNS = (
    "policy",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "batch docs/s",
    "makespan s",
    "suspensions",
    "work lost s",
)


def summary_table(result: dict[str, Any]) -> tuple[tuple[str, ...], list[list[str]]]:
    """The demo's table, as text cells: the stream-alone row, then a row per policy (the
    console table and index.html both show this)."""
    alone = result["stream_alone"]
    rows = [["stream alone", *(_ms(alone[f"stream_ms_p{q}"]) for q in (50, 95, 99)), *(["-"] * 4)]]
    for name, r in result["policies"].items():
        rows.append(
            [
                name,
                *(_ms(r[f"stream_ms_p{q}"]) for q in (50, 95, 99)),
                f"{r['batch_records_per_s']:,.0f}",
                f"{r['batch_makespan_s']:.2f}",
                str(r["suspensions"]),
                f"{r['work_lost_s']:.2f}",
            ]
        )
    return SUMMARY_COLUMNS, rows


def _row(cells: list[str], cell: str = "td") -> str:
    return "<tr>" + "".join(f"<{cell}>{html.escape(c)}</{cell}>" for c in cells) + "</tr>"


def _ms(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1f}"
