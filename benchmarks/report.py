"""Tables and charts from benchmark JSON files (written by run.py and replay.py).

    python benchmarks/report.py benchmarks/results/guest-*.json benchmarks/results/replay-*.json

For each file: a Markdown table next to it (same name, .md) and, unless
``--no-latest``, copies as ``results/guest-latest.{md,png}`` or
``results/replay-latest.{md,png}``. Charts need matplotlib (``pip install -e .[bench]``);
without it only the tables are written.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MIB = 1 << 20

WORKLOAD_TITLES = {
    "seq-write": "sequential write",
    "seq-read": "sequential read",
    "files-create": "create files",
    "files-stat": "stat files",
    "files-unlink": "unlink files",
    "tree-untar": "tree: untar",
    "tree-find": "tree: find",
    "tree-du": "tree: du",
    "tree-read": "tree: read back",
    "tree-rm": "tree: rm -rf",
    "par-read": "2 parallel readers",
}


#: (p9share row, its peer on the same transport and cache mode): a ratio column each,
#: shown when both ran
RATIOS = (
    ("p9share-tcp", "diod-tcp"),
    ("p9share-virtiofs-none", "virtiofsd-none"),
    ("p9share-virtiofs-auto", "virtiofsd-auto"),
)


def title(workload: str) -> str:
    parts = workload.split("/")
    base = WORKLOAD_TITLES.get(parts[0], parts[0])
    if len(parts) == 3:
        return f"{base}, cache={parts[1]}, msize {int(parts[2]) // 1024}K"
    if len(parts) == 2:  # e.g. seq-write/virtio-fs: the cache mode is the server's
        return f"{base}, {parts[1]}"
    return base


def short_title(workload: str) -> str:
    """A chart label: two short lines."""
    parts = workload.split("/")
    if len(parts) == 3:
        op = parts[0].split("-")[1]
        return f"{op}\ncache={parts[1]} {int(parts[2]) // 1024}K"
    if len(parts) == 2:
        return f"{parts[0].split('-')[1]}\n{parts[1]}"
    return title(workload).replace(": ", ":\n").replace("parallel ", "parallel\n")


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def guest_stats(doc: dict) -> tuple[list[str], list[str], dict, dict]:
    """(workloads, servers, {(w, s): (median rate, best rate, unit, msizes, rounds,
    worst rate)}, {server: [CPU seconds per run]})."""
    samples: dict[tuple[str, str], list[dict]] = {}
    servers: list[str] = []
    workloads: list[str] = []
    cpu: dict[str, list[float]] = {}
    for run in doc["runs"]:
        s = run["server"]
        if run.get("skipped"):
            continue
        if s not in servers:
            servers.append(s)
        if run.get("server_cpu_seconds") is not None and not run["failures"]:
            cpu.setdefault(s, []).append(run["server_cpu_seconds"])
        for smp in run["samples"]:
            w = smp["workload"]
            if w not in workloads:
                workloads.append(w)
            samples.setdefault((w, s), []).append(smp)
    stats = {}
    for key, lst in samples.items():
        # older results: a 10 ms guest clock could read 0; the microsecond one cannot
        times = [max(x["seconds"], 1e-6) for x in lst]
        amount = lst[0]["amount"]
        unit = lst[0]["unit"]
        scale = MIB if unit == "bytes" else 1
        med = amount / scale / statistics.median(times)
        best = amount / scale / min(times)
        worst = amount / scale / max(times)
        msizes = sorted({x["msize"] for x in lst if x.get("msize")})
        unit_name = "MiB/s" if unit == "bytes" else "ops/s"
        stats[key] = (med, best, unit_name, msizes, len(lst), worst)
    return workloads, servers, stats, cpu


def _cell(med: float, lo: float, hi: float, n: int) -> str:
    """The median with the range of the rounds (a single run has none)."""
    return f"{_fmt(med)} [{_fmt(lo)}-{_fmt(hi)}]" if n > 1 else _fmt(med)


def _ratio(a: tuple[float, float, float, int], b: tuple[float, float, float, int]) -> str:
    """a's median over b's, "within noise" when the two ranges of rounds overlap."""
    text = f"{a[0] / b[0]:.2f}x"
    if a[3] > 1 and b[3] > 1 and a[1] <= b[2] and b[1] <= a[2]:
        text += " (within noise)"
    return text


def guest_markdown(doc: dict) -> str:
    workloads, servers, stats, cpu = guest_stats(doc)
    m = doc["machine"]
    sz = doc["sizes"]
    lines = [
        f"### Guest benchmarks ({doc['started'][:16].replace('T', ' ')})",
        "",
        f"Median over {doc['rounds']} interleaved rounds, the range of the rounds in "
        "brackets. Higher is better. Linux "
        + str(m.get("guest_kernel", "?"))
        + " guest under QEMU TCG "
        f"({m.get('qemu', '?')}), host {m.get('cpu_model', '?')} x{m.get('cpus', '?')}, "
        f"kernel {m.get('kernel', '?')}, Python {m.get('python', '?')}, diod {m.get('diod', '?')}. "
        f"Load average before/after: {_load(doc.get('load_before'))} / {_load(doc.get('load_after'))}"
        + _run_loads(doc)
        + ".",
        "",
        f"Sizes: sequential {sz['seq_mib']} MiB, {sz['files']} files, a tree of "
        f"{doc.get('tree', {}).get('files', sz['tree_files'])} files "
        f"({doc.get('tree', {}).get('bytes', 0) // 1024} KiB), parallel readers 2 x {sz['par_mib']} MiB. "
        "diod caps msize at 64 KiB and virtio-9p at 500 KiB: the msize column is what was asked for; "
        "see the JSON for the negotiated one. Over 9P the metadata and tree workloads run with "
        "cache=none; over virtio-fs the cache mode is the server's (its column name). Ratios "
        "compare medians of servers on the same transport and cache mode; where the two ranges "
        "overlap the ratio is within noise.",
        "",
    ]
    ratios = [(a, b) for a, b in RATIOS if a in servers and b in servers]
    lines += [
        "| workload | unit | " + " | ".join(servers + [f"{a} / {b}" for a, b in ratios]) + " |",
        "|---|---|" + "---:|" * (len(servers) + len(ratios)),
    ]
    for w in workloads:
        row = [title(w)]
        unit = next((stats[(w, s)][2] for s in servers if (w, s) in stats), "")
        row.append(unit)
        spans = {}
        for s in servers:
            st = stats.get((w, s))
            if st:
                spans[s] = (st[0], st[5], st[1], st[4])
            row.append(_cell(*spans[s]) if st else "-")
        for sa, sb in ratios:
            row.append(_ratio(spans[sa], spans[sb]) if sa in spans and sb in spans else "-")
        lines.append("| " + " | ".join(row) + " |")
    row = ["server CPU seconds per guest run", "s"]
    cspans = {s: (statistics.median(v), min(v), max(v), len(v)) for s, v in cpu.items() if v}
    for s in servers:
        row.append(_cell(*cspans[s]) if s in cspans else "(in QEMU)")
    for sa, sb in ratios:
        row.append(_ratio(cspans[sa], cspans[sb]) if sa in cspans and sb in cspans else "-")
    lines.append("| " + " | ".join(row) + " |")
    skipped = {r["server"]: r["skipped"] for r in doc["runs"] if r.get("skipped")}
    if skipped:
        lines += ["", "Skipped:", *[f"- {s}: {why}" for s, why in skipped.items()]]
    fails = [
        f"{r['server']} round {r['round'] + 1}: {f}" for r in doc["runs"] for f in r["failures"]
    ]
    if fails:
        lines += ["", "Failures:", *[f"- {f}" for f in fails]]
    return "\n".join(lines) + "\n"


def _run_loads(doc: dict) -> str:
    """The 1-minute load at the start of each guest run, lowest to highest."""
    loads = [r["load_before"][0] for r in doc["runs"] if r.get("load_before")]
    return (
        f"; 1-minute load at the start of each run {min(loads):.2f}-{max(loads):.2f}"
        if loads
        else ""
    )


def _load(x: object) -> str:
    if isinstance(x, list | tuple):
        return " ".join(f"{v:.2f}" for v in x)
    return "?"


def guest_chart(doc: dict, out: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no chart (pip install -e .[bench])", file=sys.stderr)
        return False
    workloads, servers, stats, _ = guest_stats(doc)
    groups = [
        ("Throughput (MiB/s, median)", [w for w in workloads if stats_unit(stats, w) == "MiB/s"]),
        (
            "Operations per second (median)",
            [w for w in workloads if stats_unit(stats, w) == "ops/s"],
        ),
    ]
    fig, axes = plt.subplots(2, 1, figsize=(13, 10))
    width = 0.8 / max(1, len(servers))
    colors = ["#1f77b4", "#6baed6", "#d62728", "#2ca02c", "#98df8a", "#9467bd", "#ff7f0e",
              "#8c564b", "#ffbb78", "#e377c2"]  # fmt: skip
    for ax, (ttl, ws) in zip(axes, groups, strict=True):
        for i, s in enumerate(servers):
            vals = [stats.get((w, s), (0,))[0] for w in ws]
            xs = [j + (i - (len(servers) - 1) / 2) * width for j in range(len(ws))]
            ax.bar(xs, vals, width, label=s, color=colors[i % len(colors)])
        ax.set_xticks(range(len(ws)))
        ax.set_xticklabels([short_title(w) for w in ws], fontsize=8)
        ax.set_yscale("log")
        ax.set_title(ttl)
        ax.grid(axis="y", which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(servers), fontsize=9,
               bbox_to_anchor=(0.5, 0.955))  # fmt: skip
    fig.suptitle(
        f"9P and virtio-fs servers, same Linux guest (QEMU TCG), {doc['rounds']} rounds; higher is better "
        "(log scale)",
        fontsize=12,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return True


def stats_unit(stats: dict, w: str) -> str:
    for (ww, _), st in stats.items():
        if ww == w:
            return str(st[2])
    return ""


def replay_stats(doc: dict) -> dict[tuple[str, str], dict[str, float]]:
    by: dict[tuple[str, str], list[dict]] = {}
    for r in doc["runs"]:
        by.setdefault((r["server"], r["transport"]), []).append(r)
    out = {}
    for key, lst in by.items():
        cpu10k = [x["cpu_per_10k"] for x in lst]
        wall10k = [x["wall_per_10k"] for x in lst]
        gib = [x["cpu_per_gib"] for x in lst if x["cpu_per_gib"] is not None]
        out[key] = {
            "requests": lst[0]["requests"],
            "errors": lst[0]["errors"],
            "payload": lst[0]["payload_bytes"],
            "wall_med": statistics.median(x["wall_seconds"] for x in lst),
            "wall_min": min(x["wall_seconds"] for x in lst),
            "cpu10k_med": statistics.median(cpu10k),
            "cpu10k_min": min(cpu10k),
            "wall10k_med": statistics.median(wall10k),
            "cpugib_med": statistics.median(gib) if gib else 0.0,
        }
    return out


def paired_ratios(doc: dict, server: str, transport: str) -> list[float]:
    """server's CPU over diod's, round by round: the two ran back to back, so
    the host's state (which here swings the cost of a wake-up several-fold
    within minutes) is shared by each pair."""
    cpu = {(r["server"], r["transport"], r.get("round")): r["cpu_per_10k"] for r in doc["runs"]}
    return [
        v / cpu[("diod", t, rnd)]
        for (srv, t, rnd), v in sorted(cpu.items(), key=lambda kv: str(kv[0][2]))
        if srv == server and t == transport and cpu.get(("diod", t, rnd))
    ]


def replay_markdown(doc: dict) -> str:
    st = replay_stats(doc)
    m = doc["machine"]
    stream = doc["stream"]
    lines = [
        f"### Host replay ({doc['started'][:16].replace('T', ' ')})",
        "",
        f"{stream['requests']} requests recorded from the {stream.get('client', 'Linux')} client "
        f"running benchmarks/guest.sh against {stream.get('server', 'diod')} "
        f"({stream.get('mount_opts', '')}), replayed with the recorded concurrency; "
        f"median of {doc['rounds']} rounds (min in parentheses). Server CPU = utime + stime "
        "of the server process; per GiB = all of it over the stream's Twrite + Rread payload "
        f"({_payload(st)} MiB; the stream is mostly metadata). Host {m.get('cpu_model', '?')} x{m.get('cpus', '?')}, "
        f"kernel {m.get('kernel', '?')}, Python {m.get('python', '?')}. Load average "
        f"before/after: {_load(doc.get('load_before'))} / {_load(doc.get('load_after'))}.",
        "",
        "CPU vs diod: the median of the per-round ratios (each p9share run and the diod run "
        "next to it share the host's state), with their range.",
        "",
        "| server | transport | wall s | wall ms / 10k req | server CPU s / 10k req | "
        "CPU vs diod (range) | server CPU s / GiB | error replies |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (server, transport), s in sorted(st.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        pairs = paired_ratios(doc, server, transport)
        ratio = (
            f"{statistics.median(pairs):.2f}x ({min(pairs):.2f}-{max(pairs):.2f})" if pairs else "-"
        )
        lines.append(
            f"| {server} | {transport} | {s['wall_med']:.2f} ({s['wall_min']:.2f}) | "
            f"{s['wall10k_med'] * 1000:.0f} | {s['cpu10k_med']:.2f} ({s['cpu10k_min']:.2f}) | "
            f"{ratio} | {_fmt(s['cpugib_med'])} | {s['errors']} |"
        )
    if doc.get("rss"):
        lines += ["", "| server | RSS idle | RSS with 10,000 fids |", "|---|---:|---:|"]
        for r in doc["rss"]:
            lines.append(
                f"| {r['server']} | {r['rss_idle'] / MIB:.1f} MiB | {r['rss_with_fids'] / MIB:.1f} MiB |"
            )
    return "\n".join(lines) + "\n"


def _payload(st: dict[tuple[str, str], dict[str, float]]) -> str:
    return str(round(max((v["payload"] for v in st.values()), default=0) / MIB))


def replay_chart(doc: dict, out: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    st = replay_stats(doc)
    keys = sorted(st, key=lambda k: (k[1], k[0]))
    labels = [f"{s}\n{t}" for s, t in keys]
    colors = ["#1f77b4" if s == "p9share" else "#d62728" for s, _ in keys]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    axes[0].bar(labels, [st[k]["cpu10k_med"] for k in keys], color=colors)
    axes[0].set_title("server CPU seconds per 10,000 requests (lower is better)")
    axes[1].bar(labels, [st[k]["wall10k_med"] for k in keys], color=colors)
    axes[1].set_title("replay wall seconds per 10,000 requests")
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
        ax.tick_params(labelsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--no-latest", action="store_true", help="do not update results/*-latest.*")
    a = ap.parse_args(argv)
    for f in a.files:
        doc = json.loads(f.read_text())
        kind = doc.get("kind")
        if kind == "guest":
            md, chart = guest_markdown(doc), guest_chart
        elif kind == "replay":
            md, chart = replay_markdown(doc), replay_chart
        else:
            print(f"{f}: not a benchmark result", file=sys.stderr)
            return 2
        f.with_suffix(".md").write_text(md)
        png = f.with_suffix(".png")
        have_png = chart(doc, png)
        if not a.no_latest:
            (f.parent / f"{kind}-latest.md").write_text(md)
            if have_png:
                (f.parent / f"{kind}-latest.png").write_bytes(png.read_bytes())
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
