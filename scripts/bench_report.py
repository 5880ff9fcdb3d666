#!/usr/bin/env python3
"""Dequant-GEMM benchmark report: Google Benchmark JSON -> markdown table and GB/s-vs-M plot.

    python3 scripts/bench_report.py gemv.json gemm.json --markdown out.md --plot out.png

Reads the JSON that bench_gemv / bench_gemm write with --benchmark_out=FILE
--benchmark_out_format=json (see bench/README.md). Each row is the median over repetitions: the
"median" aggregate when the run had --benchmark_report_aggregates_only, else the median of the
individual runs. A row is flagged when its time spread (max / min - 1) exceeds 10%, from the
"min"/"max" aggregates the benches add, or from the individual runs.

The plot has one line per configuration (bits, group, symmetric, activations, threads) through
all M of all files, and a dashed horizontal line at the read bandwidth each file's process
measured (its JSON context). It needs matplotlib; the markdown does not.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

SPREAD_LIMIT = 0.10  # bench-method.md: say when min and max spread more than 10%

# "BM_Gemv<4, 128, true>/N:4096/K:4096/M:1/act:0/manual_time"
NAME_PATTERN = re.compile(r"^BM_(?P<kind>\w+)<(?P<bits>\d+),\s*(?P<group>-?\d+),\s*(?P<sym>true|false)>"
                          r"(?P<args>(?:/\w+:-?\d+)*)")
TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
COUNTERS = ("GBps", "roofline", "GFLOPs", "vs_eigen", "eigen_ms", "read_ms", "vs_read",
            "separate_ms", "vs_separate")


@dataclass
class Row:
    run_name: str
    kind: str  # "Gemv", "Gemm" or "Moe"
    bits: int
    group: int  # -1: per channel
    symmetric: bool
    m: int
    n: int
    k: int
    activations: str  # "fp32" or "int8"
    isa: str
    threads: str
    time_ms: float
    counters: dict = field(default_factory=dict)
    spread: float | None = None  # max / min - 1 of the time, when known

    @property
    def weights(self) -> str:
        group = "per-channel" if self.group == -1 else f"g{self.group}"
        return f"W{self.bits} {group} {'sym' if self.symmetric else 'asym'}"

    @property
    def config(self) -> str:
        # GEMV and GEMM rows are one kernel API over M: one line through both.
        kind = "MoE " if self.kind == "Moe" else ""
        return f"{kind}{self.weights} {self.activations} {self.isa} {self.threads}t"


@dataclass
class FileContext:
    path: str
    threads: str
    bandwidth_gbps: float | None
    cpu_model: str
    isas: str
    date: str


def fail(message: str) -> None:
    print(f"bench_report.py: {message}", file=sys.stderr)
    sys.exit(2)


def parse_name(run_name: str) -> dict | None:
    match = NAME_PATTERN.match(run_name)
    if match is None:
        return None
    args = dict(re.findall(r"/(\w+):(-?\d+)", match.group("args")))
    return {
        "kind": match.group("kind"),
        "bits": int(match.group("bits")),
        "group": int(match.group("group")),
        "symmetric": match.group("sym") == "true",
        "args": {key: int(value) for key, value in args.items()},
    }


def load(path: str) -> tuple[FileContext, list[Row]]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        fail(f"cannot read {path}: {error}")
    context = data.get("context", {})
    bandwidth = context.get("read_bandwidth_GBps")
    file_context = FileContext(
        path=path,
        threads=str(context.get("threads", "?")),
        bandwidth_gbps=float(bandwidth) if bandwidth not in (None, "") else None,
        cpu_model=context.get("cpu_model", "?"),
        isas=context.get("isa_available", "?"),
        date=context.get("date", "?"),
    )

    # run_name -> {"median": entry, "min": entry, "max": entry, "runs": [entries]}
    groups: dict[str, dict] = {}
    for entry in data.get("benchmarks", []):
        run_name = entry.get("run_name", entry.get("name", ""))
        if entry.get("error_occurred"):
            print(f"bench_report.py: {path}: {run_name} reported an error: "
                  f"{entry.get('error_message', '')}", file=sys.stderr)
            continue
        group = groups.setdefault(run_name, {"runs": []})
        if entry.get("run_type") == "aggregate":
            group[entry.get("aggregate_name")] = entry
        else:
            group["runs"].append(entry)

    rows = []
    for run_name, group in groups.items():
        parsed = parse_name(run_name)
        if parsed is None:
            continue  # not a dequant-GEMM benchmark
        row = summarize(run_name, parsed, group, file_context)
        if row is not None:
            rows.append(row)
    return file_context, rows


def time_ms(entry: dict) -> float:
    return float(entry["real_time"]) * TO_MS.get(entry.get("time_unit", "ns"), 1e-6)


def summarize(run_name: str, parsed: dict, group: dict, context: FileContext) -> Row | None:
    runs = group["runs"]
    if "median" in group:
        median = group["median"]
        time = time_ms(median)
        counters = {name: median.get(name) for name in COUNTERS}
        label = median.get("label", "")
    elif runs:
        time = statistics.median(time_ms(run) for run in runs)
        counters = {}
        for name in COUNTERS:
            values = [run[name] for run in runs if name in run]
            counters[name] = statistics.median(values) if values else None
        label = runs[0].get("label", "")
    else:
        return None

    spread = None
    if "min" in group and "max" in group:
        low, high = time_ms(group["min"]), time_ms(group["max"])
        spread = high / low - 1.0 if low > 0 else None
    elif len(runs) > 1:
        times = [time_ms(run) for run in runs]
        spread = max(times) / min(times) - 1.0 if min(times) > 0 else None

    # Label: "<isa> <activations>"; the act argument says the same when the label is missing.
    label_parts = label.split()
    args = parsed["args"]
    activations = label_parts[1] if len(label_parts) > 1 else ("int8" if args.get("act") else "fp32")
    return Row(run_name=run_name, kind=parsed["kind"], bits=parsed["bits"], group=parsed["group"],
               symmetric=parsed["symmetric"], m=args.get("M", args.get("T", 0)), n=args.get("N", 0),
               k=args.get("K", 0), activations=activations,
               isa=label_parts[0] if label_parts else "?", threads=context.threads, time_ms=time,
               counters=counters, spread=spread)


def number(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(contexts: list[FileContext], rows: list[Row]) -> str:
    lines = ["# Dequant-GEMM benchmarks", ""]
    lines.append("| file | CPU | threads | read bandwidth GB/s | ISAs available | date |")
    lines.append("|---|---|---|---|---|---|")
    for context in contexts:
        lines.append(f"| {context.path} | {context.cpu_model} | {context.threads} | "
                     f"{number(context.bandwidth_gbps, 1)} | {context.isas} | {context.date} |")
    lines.append("")
    lines.append("Medians of the repetitions. GBps: (qweight + scales + zeros) bytes per second; "
                 "roofline: GBps / read bandwidth (same process, same threads, measured at "
                 "start-up); vs_read: a streaming read of the same cold bytes, timed in the same "
                 "loop / ours (1.0: the kernel costs what reading its weights costs); GFLOPs: "
                 "2*M*N*K per second (MoE: M = tokens * top_k); vs_eigen: Eigen fp32 time on the "
                 "dequantized weights / ours (> 1: nibble is faster); MoE rows: M is the token "
                 "count, vs_separate: one nibble::gemm per expert on pre-gathered tokens / "
                 "moe_gemm.")
    lines.append("")
    several_threads = len({row.threads for row in rows}) > 1
    header = ["benchmark", "ISA", "activations"] + (["threads"] if several_threads else []) + \
             ["M", "N", "K", "time ms", "GBps", "roofline", "vs_read", "GFLOPs", "vs_eigen"] + \
             (["vs_separate"] if any(row.kind == "Moe" for row in rows) else []) + ["note"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    noisy = []
    for row in rows:
        note = ""
        if row.spread is not None and row.spread > SPREAD_LIMIT:
            note = f"spread {row.spread * 100:.0f}%"
            noisy.append(row)
        cells = [f"{row.kind.lower()} {row.weights}", row.isa, row.activations] + \
                ([row.threads] if several_threads else []) + \
                [str(row.m), str(row.n), str(row.k), number(row.time_ms, 3),
                 number(row.counters.get("GBps"), 2), number(row.counters.get("roofline"), 3),
                 number(row.counters.get("vs_read"), 3), number(row.counters.get("GFLOPs"), 1),
                 number(row.counters.get("vs_eigen"), 2)] + \
                ([number(row.counters.get("vs_separate"), 2)]
                 if any(r.kind == "Moe" for r in rows) else []) + [note]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if noisy:
        lines.append(f"{len(noisy)} of {len(rows)} rows spread more than "
                     f"{SPREAD_LIMIT * 100:.0f}% between the fastest and slowest repetition "
                     "(max / min time); treat them with care.")
    elif any(row.spread is not None for row in rows):
        lines.append(f"Every row's repetitions are within {SPREAD_LIMIT * 100:.0f}% "
                     "(max / min time).")
    else:
        lines.append("Single runs: no repetitions, so no spread is known "
                     "(run with --benchmark_repetitions=5).")
    lines.append("")
    return "\n".join(lines)


def import_pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as pyplot
    except ImportError:
        fail("--plot needs matplotlib, which is not installed "
             "(pip install matplotlib), or leave out --plot")
    return pyplot


def plot(pyplot, contexts: list[FileContext], rows: list[Row], output: str) -> None:
    figure, axes = pyplot.subplots(figsize=(12, 7))
    lines: dict[str, list[Row]] = {}
    for row in rows:
        lines.setdefault(row.config, []).append(row)
    for config, points in sorted(lines.items()):
        points = sorted((row for row in points if row.counters.get("GBps") is not None),
                        key=lambda row: row.m)
        if points:
            axes.plot([row.m for row in points], [row.counters["GBps"] for row in points],
                      marker="o", label=config)
    bandwidths = {}
    for context in contexts:
        if context.bandwidth_gbps is not None:
            bandwidths.setdefault(context.threads, []).append(context.bandwidth_gbps)
    for threads, values in sorted(bandwidths.items()):
        value = statistics.median(values)
        axes.axhline(value, color="black", linestyle="--", linewidth=1)
        axes.annotate(f"read bandwidth, {threads} threads: {value:.1f} GB/s", (0.01, value),
                      xycoords=("axes fraction", "data"), textcoords="offset points",
                      xytext=(0, 3), fontsize=8)
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    measured_ms = sorted({row.m for row in rows})
    axes.set_xticks(measured_ms)
    axes.set_xticklabels([str(m) for m in measured_ms])
    axes.set_xlabel("M (rows of activations)")
    axes.set_ylabel("GB/s of quantized weights (qweight + scales + zeros)")
    cpu = ", ".join(sorted({context.cpu_model for context in contexts}))
    axes.set_title(f"Dequant-GEMM, N x K = {rows[0].n} x {rows[0].k} ({cpu})" if rows else cpu)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, ncol=1, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    figure.savefig(output, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="+", help="Google Benchmark JSON files")
    parser.add_argument("--markdown", help="write the table here (default: stdout)")
    parser.add_argument("--plot", help="write a PNG of GB/s vs M here (needs matplotlib)")
    arguments = parser.parse_args()
    pyplot = import_pyplot() if arguments.plot else None  # fail before writing anything

    contexts, rows = [], []
    for path in arguments.inputs:
        context, file_rows = load(path)
        contexts.append(context)
        rows.extend(file_rows)
    if not rows:
        fail("no BM_Gemv / BM_Gemm / BM_Moe results in " + ", ".join(arguments.inputs))
    rows.sort(key=lambda row: (row.kind, row.threads, row.isa, row.bits,
                               row.group if row.group > 0 else 1 << 30,
                               not row.symmetric,
                               row.activations, row.m))

    text = markdown(contexts, rows)
    if arguments.markdown:
        Path(arguments.markdown).write_text(text)
    else:
        print(text)
    if arguments.plot:
        plot(pyplot, contexts, rows, arguments.plot)


if __name__ == "__main__":
    main()
