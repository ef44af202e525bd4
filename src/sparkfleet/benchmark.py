"""Benchmark reports: llama-benchy results summarised, compared with the model card, rendered.

``python -m sparkfleet.benchmark host ...`` turns one host's llama-benchy JSON files into a summary
(``HOST.json``) and a Markdown table (``HOST.md``); ``python -m sparkfleet.benchmark fleet ...``
gathers the hosts' summaries into ``fleet.json``, ``fleet.md`` and a chart ``fleet.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Metric:
    """One figure of the model card's table."""

    key: str
    label: str
    unit: str
    higher_is_better: bool


METRICS = [
    Metric("decode_tps", "decode throughput", "tok/s", True),
    Metric("prefill_512_tps", "prefill, 512 tokens", "tok/s", True),
    Metric("prefill_4096_tps", "prefill, 4096 tokens", "tok/s", True),
    Metric("ttft_512_ms", "TTFT, 512 tokens", "ms", False),
    Metric("long_context_decode_tps", "decode with a long system prompt", "tok/s", True),
]
METRIC_BY_KEY = {m.key: m for m in METRICS}


@dataclass(frozen=True)
class Finding:
    """A measured figure next to its reference."""

    metric: str
    measured: float | None
    reference: float | None
    ratio: float | None  # measured/reference, inverted for lower-is-better figures
    ok: bool | None  # None when there is nothing to compare


def _rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in result.get("benchmarks", []) if not r.get("is_context_prefill_phase")]


def _mean(row: dict[str, Any], key: str) -> float | None:
    value = (row.get(key) or {}).get("mean")
    return float(value) if value is not None else None


def summarize(short: dict[str, Any], long: dict[str, Any] | None = None) -> dict[str, float | None]:
    """The card's figures from llama-benchy results (depth 0, and the long-context run)."""
    summary: dict[str, float | None] = {m.key: None for m in METRICS}
    base = [r for r in _rows(short) if not r.get("context_size")]
    decode = [v for r in base if (v := _mean(r, "tg_throughput")) is not None]
    summary["decode_tps"] = statistics.fmean(decode) if decode else None
    for row in base:
        if row.get("prompt_size") == 512:
            summary["prefill_512_tps"] = _mean(row, "pp_throughput")
            summary["ttft_512_ms"] = _mean(row, "e2e_ttft")
        elif row.get("prompt_size") == 4096:
            summary["prefill_4096_tps"] = _mean(row, "pp_throughput")
    if long is not None:
        deep = [r for r in _rows(long) if r.get("context_size")]
        values = [v for r in deep if (v := _mean(r, "tg_throughput")) is not None]
        summary["long_context_decode_tps"] = statistics.fmean(values) if values else None
    return summary


def compare(
    summary: dict[str, float | None], reference: dict[str, float], tolerance: float
) -> list[Finding]:
    """Each figure against the reference: a host falls short below (1 - tolerance) of it."""
    findings = []
    for metric in METRICS:
        measured, ref = summary.get(metric.key), reference.get(metric.key)
        if measured is None or not ref:
            findings.append(Finding(metric.key, measured, ref, None, None))
            continue
        ratio = measured / ref if metric.higher_is_better else ref / measured if measured else 0.0
        findings.append(Finding(metric.key, measured, ref, ratio, ratio >= 1.0 - tolerance))
    return findings


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def host_markdown(host: str, findings: list[Finding], tolerance: float) -> str:
    """A host's figures as a Markdown table."""
    lines = [
        f"### {host}",
        "",
        f"| metric | measured | model card | ratio | within {tolerance:.0%} |",
        "|---|---:|---:|---:|:---:|",
    ]
    for f in findings:
        metric = METRIC_BY_KEY[f.metric]
        verdict = "-" if f.ok is None else ("yes" if f.ok else "**NO**")
        lines.append(
            f"| {metric.label} ({metric.unit}) | {_fmt(f.measured)} | {_fmt(f.reference)} "
            f"| {_fmt(f.ratio, 2)} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def host_report(
    host: str,
    short: dict[str, Any],
    long: dict[str, Any] | None,
    reference: dict[str, float],
    tolerance: float,
) -> dict[str, Any]:
    """Summary, findings and verdict of one host."""
    summary = summarize(short, long)
    findings = compare(summary, reference, tolerance)
    short_of = [f.metric for f in findings if f.ok is False]
    return {
        "host": host,
        "summary": summary,
        "findings": [asdict(f) for f in findings],
        "tolerance": tolerance,
        "short_of_reference": short_of,
        "ok": not short_of,
    }


def fleet_markdown(reports: list[dict[str, Any]]) -> str:
    """The fleet's figures, one row per host, shortfalls flagged."""
    head = "| host | " + " | ".join(f"{m.label} ({m.unit})" for m in METRICS) + " | verdict |"
    lines = ["## Fleet benchmark", "", head, "|---|" + "---:|" * len(METRICS) + ":---:|"]
    for rep in reports:
        cells = []
        for f in rep["findings"]:
            mark = " ⚠" if f["ok"] is False else ""
            cells.append(_fmt(f["measured"]) + mark)
        verdict = "ok" if rep["ok"] else "SHORT: " + ", ".join(rep["short_of_reference"])
        lines.append(f"| {rep['host']} | " + " | ".join(cells) + f" | {verdict} |")
    if reports:
        ref = {f["metric"]: f["reference"] for f in reports[0]["findings"]}
        lines.append("| model card | " + " | ".join(_fmt(ref.get(m.key)) for m in METRICS) + " | |")
    return "\n".join(lines) + "\n"


def fleet_chart(reports: list[dict[str, Any]], path: Path) -> None:
    """A bar chart of each host's figures relative to the model card (1.0 = as published)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    width = 0.8 / max(1, len(reports))
    for i, rep in enumerate(reports):
        ratios = [f["ratio"] or 0.0 for f in rep["findings"]]
        xs = [j + i * width for j in range(len(METRICS))]
        ax.bar(xs, ratios, width=width, label=rep["host"])
    tolerance = reports[0]["tolerance"] if reports else 0.0
    ax.axhline(1.0, color="black", linewidth=1)
    ax.axhline(1.0 - tolerance, color="red", linestyle="--", linewidth=1, label="shortfall line")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(METRICS))])
    ax.set_xticklabels([m.label for m in METRICS], rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("measured / model card (TTFT inverted; higher is better)")
    ax.set_title("vLLM benchmark per host vs the model card's figures")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _load(path: str | None) -> dict[str, Any] | None:
    if not path:
        return None
    data: dict[str, Any] = json.loads(Path(path).read_text())
    return data


def main(argv: list[str] | None = None) -> int:
    """Command line: ``host`` and ``fleet`` reports."""
    parser = argparse.ArgumentParser(prog="python -m sparkfleet.benchmark")
    sub = parser.add_subparsers(dest="cmd", required=True)
    host = sub.add_parser("host", help="summarise one host's llama-benchy results")
    host.add_argument("--name", required=True)
    host.add_argument("--short", required=True, help="llama-benchy JSON of the depth-0 run")
    host.add_argument("--long", help="llama-benchy JSON of the long-context run")
    host.add_argument("--reference", required=True, help="JSON object of reference figures")
    host.add_argument("--tolerance", type=float, required=True)
    host.add_argument("--out-dir", required=True)
    fleet = sub.add_parser("fleet", help="gather host summaries into the fleet report")
    fleet.add_argument("--out-dir", required=True)
    fleet.add_argument("hosts", nargs="+", help="host names whose HOST.json to gather")
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.cmd == "host":
        short = _load(args.short) or {}
        report = host_report(
            args.name, short, _load(args.long), json.loads(args.reference), args.tolerance
        )
        (out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
        findings = [Finding(**f) for f in report["findings"]]
        (out / f"{args.name}.md").write_text(host_markdown(args.name, findings, args.tolerance))
        print(json.dumps(report))
        return 0
    reports = [json.loads((out / f"{h}.json").read_text()) for h in args.hosts]
    fleet_doc = {"hosts": reports, "short_hosts": [r["host"] for r in reports if not r["ok"]]}
    (out / "fleet.json").write_text(json.dumps(fleet_doc, indent=2) + "\n")
    (out / "fleet.md").write_text(fleet_markdown(reports))
    fleet_chart(reports, out / "fleet.png")
    print(json.dumps({"short_hosts": fleet_doc["short_hosts"], "dir": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
