"""Output: rich tables on stdout, JSON and a PNG of the scaling runs under bench/results/."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.config import LENGTHS, WORKER_COUNTS
from bench.results_model import Results, Section


def _fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "—"
    if unit == "ms" and value < 10:
        return f"{value:.2f}"
    return f"{value:.1f}" if value < 1000 else f"{value:,.0f}"


def table(section: Section, repeats: int) -> Table:
    t = Table(
        title=section.title,
        caption=" ".join(section.notes) or None,
        caption_justify="left",
        title_justify="left",
        show_lines=False,
    )
    t.add_column("Workload")
    t.add_column("unit")
    t.add_column(section.a_label, justify="right")
    t.add_column(section.b_label, justify="right")
    t.add_column(section.ratio_label, justify="right", style="bold")
    t.add_column("runs", justify="right", style="dim")
    for row in section.rows:
        ratio = section.ratio(row)
        t.add_row(
            row.name,
            row.unit,
            _fmt(row.a_median, row.unit),
            _fmt(row.b_median, row.unit),
            "—" if math.isnan(ratio) else f"{ratio:.2f}",
            str(max(len(row.a), len(row.b))),
        )
    return t


def print_tables(results: Results, console: Console) -> None:
    repeats = int(results.meta.get("repeats", 1))
    console.print()
    console.print(
        f"[bold]sagaq vs raw Celery[/bold] — medians of {repeats} run(s); "
        f"{results.meta.get('cpus')} CPUs; load before {results.meta.get('load_before')}"
    )
    for section in results.sections:
        console.print()
        console.print(table(section, repeats))
    for error in results.errors:
        console.print(f"[red]error:[/red] {error}")


def markdown(results: Results) -> str:
    """The same tables as Markdown (pasted into bench/README.md)."""
    lines: list[str] = []
    for section in results.sections:
        lines += [f"**{section.title}**", ""]
        lines.append(
            f"| Workload | unit | {section.a_label} | {section.b_label} | {section.ratio_label} |"
        )
        lines.append("|---|---|--:|--:|--:|")
        for row in section.rows:
            ratio = section.ratio(row)
            lines.append(
                f"| {row.name} | {row.unit} | {_fmt(row.a_median, row.unit)} | "
                f"{_fmt(row.b_median, row.unit)} | "
                f"{'—' if math.isnan(ratio) else f'{ratio:.2f}'} |"
            )
        if section.notes:
            lines += ["", " ".join(section.notes)]
        lines.append("")
    return "\n".join(lines)


def write_json(results: Results, directory: Path, stamp: str) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results.to_json(), indent=2, sort_keys=False) + "\n"
    paths = [directory / f"{stamp}.json", directory / "latest.json"]
    for path in paths:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    (directory / "latest.md").write_text(markdown(results))
    return paths


def plot(results: Results, directory: Path, stamp: str) -> list[Path]:
    """One PNG: W1 throughput vs worker processes, latency vs saga length, big vs empty table."""
    panels = [s for s in (results.section(k) for k in ("workers", "length", "bigtable")) if s]
    if not panels:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, section in zip(axes[0], panels, strict=True):
        if section.key == "workers":
            xs = list(WORKER_COUNTS)
            rows = [section.get(f"workers.{c}") for c in xs]
            ax.plot(xs, [r.a_median for r in rows], "o-", label="sagaq")
            ax.plot(xs, [r.b_median for r in rows], "s--", label="raw Celery")
            ax.set_xticks(xs)
            ax.set_xlabel("worker pool processes (prefork -c)")
            ax.set_ylabel("W1 sagas/s (5 steps)")
            ax.set_title("Throughput vs worker processes")
            ax.set_ylim(bottom=0)
        elif section.key == "length":
            xs = list(LENGTHS)
            p50 = [section.get(f"L{n}.p50") for n in xs]
            p99 = [section.get(f"L{n}.p99") for n in xs]
            ax.plot(xs, [r.a_median for r in p50], "o-", color="C0", label="sagaq p50")
            ax.plot(xs, [r.a_median for r in p99], "o:", color="C0", label="sagaq p99")
            ax.plot(xs, [r.b_median for r in p50], "s-", color="C1", label="raw p50")
            ax.plot(xs, [r.b_median for r in p99], "s:", color="C1", label="raw p99")
            ax.set_xticks(xs)
            ax.set_xlabel("steps per saga")
            ax.set_ylabel("end-to-end latency (ms)")
            ax.set_title("Latency vs saga length")
            ax.set_ylim(bottom=0)
        else:
            keys = ("big.throughput", "big.status_p50", "big.status_p99")
            names = ["W1 throughput", "status() p50", "status() p99"]
            rows = [section.get(k) for k in keys]
            ratios = [section.ratio(r) for r in rows]
            bars = ax.bar(names, ratios, color=["C2", "C0", "C0"])
            for bar, row in zip(bars, rows, strict=True):
                unit = "/s" if row.key == "big.throughput" else " ms"
                ax.annotate(
                    f"{_fmt(row.a_median, row.unit)} -> {_fmt(row.b_median, row.unit)}{unit}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
            ax.axhline(1.0, color="grey", linestyle="--", label="flat (ratio 1)")
            ax.set_ylabel(f"{section.b_label} / {section.a_label}")
            ax.set_ylim(0, max([1.5, *[r * 1.2 for r in ratios if not math.isnan(r)]]))
            ax.set_title("Big saga table vs empty")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"sagaq bench {stamp} — {results.meta.get('primary_label', '')}", fontsize=10)
    fig.tight_layout()
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"scaling-{stamp}.png", directory / "scaling-latest.png"]
    for path in paths:
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return paths
