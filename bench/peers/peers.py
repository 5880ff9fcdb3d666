"""Side-by-side peer benchmark: nibble, ggml and onnxruntime on the same shapes, in interleaved
rounds, one process per measurement. Prints a markdown table.

    python3 bench/peers/peers.py --nibble build/release/bench/nibble_peer [--quick]
        [--rounds 5] [--threads 1,2] [--ms 1,2,4,8,16,512] [--shapes 4096x4096,14336x4096]
        [--work /tmp/nibble-peers] [--json results.jsonl] [--plot peers.png]
    python3 bench/peers/peers.py --summarize results.jsonl [--plot peers.png]
        (the table, and the plot, again from a --json log: no measuring)

Peers: ggml 0.15.3 from the ggml-python 0.0.45 sdist (built by build_ggml.sh into --work; q4_0,
q4_K, q8_0, in the CPU_REPACK buffer where ggml repacks the type on this CPU), onnxruntime 1.32
MatMulNBits (accuracy_level 0: fp32 compute; 4: int8 activations), installed with pip if missing.
nibble's weights are packed once before timing (pack_for_cpu, --layout packed, the default),
as ggml's CPU_REPACK and ORT's prepack rearrange theirs at load. Cases pair like with like: nibble with int8 activations against ggml (q8 activations always) and
ORT level 4; nibble fp32 against ORT level 0.

A round runs every peer of a case once (order rotated round by round), after a read-bandwidth
measurement with the same thread count; each measurement is the median of --calls calls. The
table gives per peer the median over rounds and the spread (max/min over rounds), GB/s of the
weight bytes, the roofline fraction (weight bytes / time / that round's read bandwidth) for cold
cases, and nibble / best peer with the same activations.

"hot": one weight copy, used every call (cache-resident when it fits the last-level cache);
"cold": distinct copies exceeding 4x the last-level cache, rotated call by call.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# (label, nibble bits / group / sym, ggml type)
WEIGHTS = {
    "4-bit g32 sym": (4, 32, 1, "q4_0"),
    "4-bit g128 asym": (4, 128, 0, "q4_K"),
    "8-bit g32 sym": (8, 32, 1, "q8_0"),
}


def llc_bytes() -> int:
    try:
        sizes = []
        base = "/sys/devices/system/cpu/cpu0/cache"
        for index in os.listdir(base):
            with open(os.path.join(base, index, "size")) as f:
                text = f.read().strip()
            sizes.append(int(text[:-1]) * 1024 if text.endswith("K") else int(text))
        return max(sizes)
    except OSError:
        return 32 << 20


def run_json(command) -> dict:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def ensure_onnxruntime() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "onnxruntime==1.32.*", "onnx"], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nibble", help="path of the nibble_peer binary (the bench build)")
    parser.add_argument("--summarize", help="a --json log: print its table (and --plot) without measuring")
    parser.add_argument("--plot", help="also draw each case's times relative to its fastest peer (needs matplotlib)")
    parser.add_argument("--work", default="/tmp/nibble-peers", help="where ggml is downloaded and built")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--threads")
    parser.add_argument("--ms")
    parser.add_argument("--shapes", help="NxK list")
    parser.add_argument("--weights", default=",".join(WEIGHTS), help="subset of: " + ", ".join(WEIGHTS))
    parser.add_argument("--temperatures", default="hot,cold")
    parser.add_argument("--quick", action="store_true", help="defaults 4096x4096, M = 1 and 8, 1 thread")
    parser.add_argument("--json", help="also append every measurement to this file (JSON lines)")
    parser.add_argument("--layout", default="packed", choices=["packed", "canonical", "both"],
                        help="nibble's weights: packed once at load (pack_for_cpu, as the peers repack), "
                             "the canonical layout, or both (canonical rows added as 'nibble ... canonical')")
    args = parser.parse_args()
    if args.summarize:
        rows = summarize(args.summarize)
        print(table(rows))
        if args.plot:
            plot(rows, args.plot)
        return 0
    if not args.nibble:
        parser.error("--nibble is required unless --summarize is given")
    # Unset lists: the full benchmark, or --quick's subset.
    args.shapes = args.shapes or ("4096x4096" if args.quick else "4096x4096,14336x4096")
    args.ms = args.ms or ("1,8" if args.quick else "1,2,4,8,16,512")
    args.threads = args.threads or ("1" if args.quick else "1,2")

    ensure_onnxruntime()
    ggml = subprocess.run(["bash", os.path.join(HERE, "build_ggml.sh"), args.work], check=True,
                          capture_output=True, text=True).stdout.strip().splitlines()[-1]
    ort = [sys.executable, os.path.join(HERE, "ort_peer.py")]
    log = open(args.json, "a") if args.json else None

    rows = []
    for shape in args.shapes.split(","):
        n, k = (int(v) for v in shape.split("x"))
        for label in args.weights.split(","):
            bits, group, sym, ggml_type = WEIGHTS[label]
            for temperature in args.temperatures.split(","):
                weight_bytes = n * k * bits // 8 + n * (k // group) * 2
                copies = 1 if temperature == "hot" else 4 * llc_bytes() // weight_bytes + 1
                for threads in (int(t) for t in args.threads.split(",")):
                    for m in (int(v) for v in args.ms.split(",")):
                        common = ["--n", str(n), "--k", str(k), "--m", str(m), "--threads", str(threads),
                                  "--copies", str(copies), "--calls", str(args.calls)]
                        wq = ["--bits", str(bits), "--group", str(group), "--sym", str(sym)]
                        main_layout = "canonical" if args.layout == "canonical" else "packed"
                        peers = {
                            "nibble int8": [args.nibble, *wq, "--act", "int8", "--layout", main_layout, *common],
                            "nibble fp32": [args.nibble, *wq, "--act", "fp32", "--layout", main_layout, *common],
                            f"ggml {ggml_type}": [ggml, "--type", ggml_type, *common],
                            "ORT level 4": [*ort, *wq, "--accuracy-level", "4", *common],
                            "ORT level 0": [*ort, *wq, "--accuracy-level", "0", *common],
                        }
                        if args.layout == "both":
                            for act in ("int8", "fp32"):
                                peers[f"nibble {act} canonical"] = [args.nibble, *wq, "--act", act, "--layout",
                                                                    "canonical", *common]
                        results = {name: [] for name in peers}  # each peer's measurements, by round
                        reads = []
                        names = list(peers)
                        for r in range(args.rounds):
                            reads.append(run_json([args.nibble, "--read-bandwidth", "--threads", str(threads)])["read_GBps"])
                            order = names[r % len(names):] + names[:r % len(names)]
                            for name in order:
                                result = run_json(peers[name])
                                results[name].append(result)
                                if log:
                                    log.write(json.dumps(dict(result, name=name, shape=shape, case=label,
                                                              temperature=temperature, round=r,
                                                              read_GBps=reads[-1])) + "\n")
                                    log.flush()
                        row = make_row(shape, label, temperature, threads, m, reads, results)
                        rows.append(row)
                        print(format_row(row), flush=True)
    print()
    print(table(rows))
    if args.plot:
        plot(rows, args.plot)
    return 0


def make_row(shape, label, temperature, threads, m, reads, results) -> dict:
    """One case of the table: the median read bandwidth of its rounds and, per peer (`results`:
    name -> its measurements), the median time over rounds, the spread (max / min), weight bytes
    and ISA / ggml buffer."""
    row = dict(shape=shape, weights=label, temperature=temperature, threads=threads, m=m,
               read=statistics.median(reads), peers={})
    for name, measurements in results.items():
        t = [r["median_ms"] for r in measurements]
        last = measurements[-1]
        row["peers"][name] = dict(ms=statistics.median(t), spread=max(t) / min(t), bytes=last["weight_bytes"],
                                  isa=last.get("isa", last.get("buffer", "")))
    return row


def summarize(path: str) -> list:
    """Rows as main() builds them, from a --json log (medians over its rounds)."""
    cases = {}
    with open(path) as log:
        for line in log:
            result = json.loads(line)
            key = (result["shape"], result["case"], result["temperature"], result["threads"], result["m"])
            case = cases.setdefault(key, {"reads": {}, "peers": {}})
            case["reads"][result["round"]] = result["read_GBps"]
            case["peers"].setdefault(result["name"], []).append(result)
    return [make_row(*key, list(case["reads"].values()), case["peers"]) for key, case in cases.items()]


def plot(rows, output: str) -> None:
    """One group of bars per case, one bar per peer: its median time / the case's fastest peer."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot
    except ImportError:
        raise SystemExit("--plot needs matplotlib (pip install matplotlib)")
    names = columns(rows)
    figure, axes = pyplot.subplots(figsize=(max(8, 1.1 * len(rows)), 6))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = []
        for row in rows:
            best = min(p["ms"] for p in row["peers"].values())
            times = {column(n): p["ms"] for n, p in row["peers"].items()}
            values.append(times[name] / best if name in times else 0.0)
        axes.bar([j + i * width for j in range(len(rows))], values, width, label=name)
    axes.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))])
    axes.set_xticklabels([f"{r['weights']}\n{r['temperature']} T={r['threads']} M={r['m']}" for r in rows],
                         fontsize=7, rotation=60, ha="right")
    axes.axhline(1.0, color="black", linewidth=0.5)
    axes.set_ylabel("time / fastest peer's time (lower is better)")
    axes.set_yscale("log")
    axes.set_title(f"nibble, ggml and onnxruntime, {rows[0]['shape']}, medians of interleaved rounds")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(output, dpi=110)


def ratio(row, nibble_name, rivals):
    best = min(row["peers"][name]["ms"] for name in rivals)
    return row["peers"][nibble_name]["ms"] / best


def format_row(row) -> str:
    parts = [f"{name} {p['ms']:.3f} ms (x{p['spread']:.2f})" for name, p in row["peers"].items()]
    return f"{row['shape']} {row['weights']} {row['temperature']} T={row['threads']} M={row['m']}: " + ", ".join(parts)


def column(name: str) -> str:
    """The table column of a peer: ggml's types (q4_0, q4_K, q8_0 by weights) share one."""
    return "ggml" if name.startswith("ggml") else name


def columns(rows) -> list:
    """The peer columns of `rows`, in order of first appearance."""
    names = []
    for row in rows:
        names += [column(n) for n in row["peers"] if column(n) not in names]
    return names


def table(rows) -> str:
    names = columns(rows)
    head = ["shape", "weights", "W", "T", "M", "read GB/s"] + [f"{n} ms" for n in names] + [
        "nibble int8 GB/s (roofline)", "nibble int8 / best int8 peer", "nibble fp32 / ORT level 0"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        p = row["peers"]
        int8_rivals = [n for n in p if n.startswith("ggml") or n == "ORT level 4"]
        nibble = p["nibble int8"]
        gbps = nibble["bytes"] / nibble["ms"] / 1e6
        roof = f"{gbps:.1f} ({gbps / row['read']:.2f})" if row["temperature"] == "cold" else f"{gbps:.1f}"
        cells = [row["shape"], row["weights"], row["temperature"], str(row["threads"]), str(row["m"]),
                 f"{row['read']:.1f}"]
        by_column = {column(n): (n, v) for n, v in p.items()}
        for c in names:
            if c not in by_column:
                cells.append("")
                continue
            name, v = by_column[c]
            kind = f" {name.split(' ', 1)[1]}" if c == "ggml" else ""
            cells.append(f"{v['ms']:.3f} (x{v['spread']:.2f}){kind}")
        cells += [roof, f"{ratio(row, 'nibble int8', int8_rivals):.2f}",
                  f"{ratio(row, 'nibble fp32', ['ORT level 0']):.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
