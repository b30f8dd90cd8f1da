"""Tables (markdown) and a plot (PNG) from benchmarks/run.py's results.json.

    python benchmarks/report.py benchmarks/results/results.json
"""

import json
import pathlib
import re
import sys
from typing import Dict, List, Optional

GIB = 2**30


def _ok(result: Optional[Dict]) -> bool:
    return bool(result) and result.get("status") == "ok"


def _status(result: Dict) -> str:
    status = result.get("status", "?")
    found = re.search(r"Out of memory allocating (\d+) bytes", result.get("error", ""))
    if found:  # results written before run.py named it
        status = f"out of memory (asked XLA for {int(found.group(1)) / 2**30:.0f} GiB at once)"
    return status


def _fmt(value, digits=2, suffix=""):
    if value is None:
        return "-"
    return f"{value:.{digits}f}{suffix}"


def _ratio(ours: Optional[Dict], ref: Optional[Dict], key: str) -> Optional[float]:
    if not (_ok(ours) and _ok(ref)):
        return None
    return ours[key] / ref[key]


def _cell(result: Optional[Dict], key: str, scale=1.0, digits=2) -> str:
    if result is None:
        return "-"
    if not _ok(result):
        status = _status(result)
        if key == "peak_rss_bytes" and result.get("peak_rss_bytes"):
            return f">{result['peak_rss_bytes'] / GIB:.1f} ({status})"
        return status if key == "best_s" else "-"
    return _fmt(result[key] / scale, digits)


def _working(result: Optional[Dict]) -> Optional[float]:
    """Peak resident memory above what the process held once its parameters were loaded."""
    if not _ok(result) or "baseline_rss_bytes" not in result:
        return None
    return result["peak_rss_bytes"] - result["baseline_rss_bytes"]


def _gflops_per_s(row: Dict, result: Optional[Dict]) -> Optional[float]:
    flops = row.get("model_flops")
    if not flops or not _ok(result):
        return None
    return flops / result["best_s"] / 1e9


def forward_table(rows: List[Dict]) -> str:
    lines = [
        "| model | compile s (ours / ref) | forward s (ours / ref) | CPU s (ours / ref) "
        "| peak GiB (ours / ref) | working GiB (ours / ref) | time ratio | memory ratio "
        "| working-memory ratio | compile ratio | GFLOP | GFLOP/s (ours / ref) | max rel. diff |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        ours, ref = row["results"].get("ours"), row["results"].get("reference")
        flops = row.get("model_flops")
        lines.append(
            "| {model} | {c} / {cr} | {f} / {fr} | {u} / {ur} | {m} / {mr} | {w} / {wr} | {tr} "
            "| {mem} | {wmem} | {cmp} "
            "| {gf} | {gs} / {gsr} | {diff} |".format(
                model=row["config"]["model"],
                c=_cell(ours, "compile_s", digits=1),
                cr=_cell(ref, "compile_s", digits=1),
                f=_cell(ours, "best_s"),
                fr=_cell(ref, "best_s"),
                u=_cell(ours, "best_cpu_s"),
                ur=_cell(ref, "best_cpu_s"),
                m=_cell(ours, "peak_rss_bytes", GIB),
                mr=_cell(ref, "peak_rss_bytes", GIB),
                w=_fmt(_working(ours) and _working(ours) / GIB),
                wr=_fmt(_working(ref) and _working(ref) / GIB),
                wmem=_fmt(_working(ours) / _working(ref) if _working(ours) and _working(ref) else None),
                tr=_fmt(_ratio(ours, ref, "best_s")),
                mem=_fmt(_ratio(ours, ref, "peak_rss_bytes")),
                cmp=_fmt(_ratio(ours, ref, "compile_s")),
                gf=_fmt(flops / 1e9 if flops else None, 0),
                gs=_fmt(_gflops_per_s(row, ours), 0),
                gsr=_fmt(_gflops_per_s(row, ref), 0),
                diff=_fmt(row.get("max_rel_diff"), 1) if row.get("max_rel_diff") is None
                else f"{row['max_rel_diff']:.1e}",
            )
        )
    return "\n".join(lines)


def bf16_table(rows: List[Dict], f32_rows: Dict[str, Dict]) -> str:
    lines = [
        "| model | forward s, bfloat16 | forward s, float32 | speed-up | time ratio to the "
        "reference (float32) | peak GiB, bfloat16 | max abs. error / max abs. output "
        "| RMS error / RMS output |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        model = row["config"]["model"]
        ours = row["results"].get("ours")
        f32 = f32_rows.get(model, {}).get("results", {}).get("ours")
        ref = f32_rows.get(model, {}).get("results", {}).get("reference")
        speedup = None
        if _ok(ours) and _ok(f32):
            speedup = f32["best_s"] / ours["best_s"]
        err = row.get("bf16_error") or {}
        lines.append(
            f"| {model} | {_cell(ours, 'best_s')} | {_cell(f32, 'best_s')} | {_fmt(speedup)} "
            f"| {_fmt(_ratio(ours, ref, 'best_s'))} | {_cell(ours, 'peak_rss_bytes', GIB)} | {_fmt(err.get('max'), 4)} "
            f"| {_fmt(err.get('rms'), 4)} |"
        )
    return "\n".join(lines)


def train_table(rows: List[Dict]) -> str:
    lines = [
        "| model | implementation | compile s | step s | peak GiB | time ratio | memory ratio | compile ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    refs = {
        row["config"]["model"]: row["results"].get("reference")
        for row in rows
        if not row["config"]["options"]
    }
    for row in rows:
        model = row["config"]["model"]
        ref = refs.get(model)
        label = "ours" + (" (remat)" if row["config"]["options"].get("remat") else "")
        entries = [(label, row["results"].get("ours"))]
        if not row["config"]["options"] and ref is not None:
            entries.append(("reference", ref))
        for name, result in entries:
            ours_like = name != "reference"
            lines.append(
                f"| {model} | {name} | {_cell(result, 'compile_s', digits=1)} "
                f"| {_cell(result, 'best_s')} | {_cell(result, 'peak_rss_bytes', GIB)} "
                f"| {_fmt(_ratio(result, ref, 'best_s')) if ours_like else ''} "
                f"| {_fmt(_ratio(result, ref, 'peak_rss_bytes')) if ours_like else ''} "
                f"| {_fmt(_ratio(result, ref, 'compile_s')) if ours_like else ''} |"
            )
    return "\n".join(lines)


SCALING_AXES = {
    "flow_size": ("image pixels (H x W)", lambda c: c["sizes"]["flow_hw"][0] * c["sizes"]["flow_hw"][1]),
    "mlm_length": ("sequence length (bytes)", lambda c: c["sizes"]["seq"]),
    "video_frames": ("frames (all outputs decoded)", lambda c: c["sizes"]["frames"]),
}


def _scaling_rows(rows: List[Dict]) -> Dict[str, List[Dict]]:
    out = {}
    for row in rows:
        parts = row["config"]["name"].split("/")
        if parts[0] == "scaling":
            out.setdefault(parts[1], []).append(row)
    return out


def scaling_table(rows: List[Dict]) -> str:
    lines = [
        "| curve | size | forward s (ours / ref) | CPU s (ours / ref) | peak GiB (ours / ref) "
        "| time ratio | memory ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for family, family_rows in _scaling_rows(rows).items():
        for row in family_rows:
            ours, ref = row["results"].get("ours"), row["results"].get("reference")
            size = row["config"]["name"].split("/")[-1]
            lines.append(
                f"| {family} | {size} | {_cell(ours, 'best_s')} / {_cell(ref, 'best_s')} "
                f"| {_cell(ours, 'best_cpu_s')} / {_cell(ref, 'best_cpu_s')} "
                f"| {_cell(ours, 'peak_rss_bytes', GIB)} / {_cell(ref, 'peak_rss_bytes', GIB)} "
                f"| {_fmt(_ratio(ours, ref, 'best_s'))} | {_fmt(_ratio(ours, ref, 'peak_rss_bytes'))} |"
            )
    return "\n".join(lines)


def plot(rows: List[Dict], path: pathlib.Path) -> bool:
    families = _scaling_rows(rows)
    if not families:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(families), figsize=(4.5 * len(families), 7), squeeze=False)
    for col, (family, family_rows) in enumerate(families.items()):
        label, size_of = SCALING_AXES[family]
        for impl, style in (("ours", "o-"), ("reference", "s--")):
            xs, times, mems = [], [], []
            for row in family_rows:
                result = row["results"].get(impl)
                if _ok(result):
                    xs.append(size_of(row["config"]))
                    times.append(result["best_s"])
                    mems.append(result["peak_rss_bytes"] / GIB)
            if xs:
                axes[0][col].plot(xs, times, style, label=impl)
                axes[1][col].plot(xs, mems, style, label=impl)
        axes[0][col].set_title(family.replace("_", " "))
        axes[0][col].set_ylabel("forward time (s)")
        axes[1][col].set_ylabel("peak resident memory (GiB)")
        axes[1][col].set_xlabel(label)
        for ax in (axes[0][col], axes[1][col]):
            ax.set_xlim(left=0)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(rows: List[Dict], meta: Dict, out_dir: pathlib.Path) -> str:
    out_dir = pathlib.Path(out_dir)
    forward = [r for r in rows if r["config"]["name"].startswith("forward/")]
    bf16 = [r for r in rows if r["config"]["name"].startswith("forward-bf16/")]
    train = [r for r in rows if r["config"]["kind"] == "train"]
    sections = [f"Command: `{meta['command']}` ({meta['date']}, {meta['cpus']} CPUs)."]
    peak = meta.get("matmul_gflops") or {}
    if peak.get("float32"):
        sections.append(
            f"One 2048x2048 matrix product on this machine: {peak['float32']:.0f} GFLOP/s in "
            f"float32, {peak.get('bfloat16', 0):.0f} GFLOP/s in bfloat16 (float32 result)."
        )
    if forward:
        sections += ["### Forward pass, float32, batch 1", forward_table(forward)]
    if bf16:
        f32 = {r["config"]["model"]: r for r in forward}
        sections += ["### Forward pass in bfloat16 (ours, opt-in)", bf16_table(bf16, f32)]
    if train:
        sections += ["### Training step (grad of mean squared output + Adam), batch 1", train_table(train)]
    if _scaling_rows(rows):
        sections += ["### Scaling (forward pass, float32, batch 1)", scaling_table(rows)]
        if plot(rows, out_dir / "scaling.png"):
            sections.append("![scaling](scaling.png)")
    text = "\n\n".join(sections) + "\n"
    (out_dir / "results.md").write_text(text)
    return text


def main():
    path = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/results.json")
    data = json.loads(path.read_text())
    print(write_report(data["rows"], data["meta"], path.parent))


if __name__ == "__main__":
    main()
