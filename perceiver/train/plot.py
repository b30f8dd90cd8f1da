"""A picture of a run's curves: WORKDIR/metrics.jsonl drawn into a PNG with matplotlib.

    perceiver train --plot WORKDIR [-o curves.png]
    perceiver train --plot RUN_A --plot RUN_B -o compared.png
    python -m perceiver.train.plot WORKDIR [WORKDIR ...] [-o curves.png]

One panel per metric (loss, learning rate, accuracy, end-point error...),
against the step: training values as a thin line with a moving average over
it, evaluation values as dots joined by a line, in the same panel when train
and eval share the metric's name.
"""

import argparse
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple, Union

# Not curves: bookkeeping of each record or of the evaluation set.
SKIPPED = ("step", "split", "examples", "masked_tokens")
COLUMNS = 3


def read_curves(path: str) -> Dict[str, Dict[str, Tuple[List[int], List[float]]]]:
    """`{metric: {split: (steps, values)}}` of a metrics.jsonl file (finite values only).

    Raises:
      FileNotFoundError: if there is no such file.
      ValueError: if it holds no metric.
    """
    curves: Dict[str, Dict[str, Tuple[List[int], List[float]]]] = {}
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by a kill
                continue
            if not isinstance(record, dict) or "step" not in record:
                continue
            split = str(record.get("split", "train"))
            for name, value in record.items():
                if name in SKIPPED or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                if not math.isfinite(value):
                    continue
                steps, values = curves.setdefault(name, {}).setdefault(split, ([], []))
                steps.append(int(record["step"]))
                values.append(float(value))
    if not curves:
        raise ValueError(f"{path} holds no metric to plot; train first.")
    return curves


def _smooth(values: Sequence[float]) -> List[float]:
    """A centred moving average over about a twentieth of the points."""
    half = max(len(values) // 40, 1)
    out = []
    for i in range(len(values)):
        window = values[max(0, i - half) : i + half + 1]
        out.append(sum(window) / len(window))
    return out


def _order(name: str) -> Tuple[int, str]:
    first = ("loss", "learning_rate")
    return (first.index(name) if name in first else len(first), name)


def _metrics_file(workdir: str) -> str:
    source = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(source):
        raise FileNotFoundError(f"no metrics.jsonl in {workdir} to plot; train first.")
    return source


def plot(workdir: Union[str, Sequence[str]], output: Optional[str] = None) -> str:
    """Draws the metrics.jsonl of one run, or of several runs over each other, into a PNG; returns its path.

    Several runs (e.g. the same recipe in float32 and in bfloat16) share each
    metric's panel, one colour per run, named by its folder.

    Args:
      workdir: the run's folder, or a sequence of them.
      output: the image (default WORKDIR/curves.png; needed for several runs).

    Raises:
      FileNotFoundError: if a workdir has no metrics.jsonl.
      ValueError: if one holds no metric, for no workdir, or for several without `output`.
      ImportError: if matplotlib is not installed (the 'train' extra has it).
    """
    workdirs = [workdir] if isinstance(workdir, str) else list(workdir)
    if not workdirs:
        raise ValueError("give at least one workdir to plot.")
    if len(workdirs) > 1 and not output:
        raise ValueError(f"{len(workdirs)} runs are drawn into one image: name it with -o PNG.")
    workdirs = [os.path.abspath(os.path.expanduser(w)) for w in workdirs]
    sources = [_metrics_file(w) for w in workdirs]
    target = os.path.abspath(os.path.expanduser(output or os.path.join(workdirs[0], "curves.png")))
    for source in sources:
        if os.path.exists(target) and os.path.samefile(target, source):
            raise ValueError(f"-o {output} would replace the metrics it draws ({source}); name another file.")
    runs = [(w, read_curves(source)) for w, source in zip(workdirs, sources)]
    labels = _run_labels(workdirs)
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    names = sorted({name for _, curves in runs for name in curves}, key=_order)
    rows = -(-len(names) // COLUMNS)
    columns = min(COLUMNS, len(names))
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, name in zip(axes.flat, names):
        drawn = 0
        for k, ((_, curves), label) in enumerate(zip(runs, labels)):
            prefix = f"{label}: " if len(runs) > 1 else ""
            # One run: a colour per split, as before; several: a colour per run.
            for j, (split, (steps, values)) in enumerate(
                sorted(curves.get(name, {}).items(), key=lambda kv: kv[0] != "train")
            ):
                colour = colours[(k if len(runs) > 1 else j) % len(colours)]
                if split == "train":
                    ax.plot(steps, values, color=colour, linewidth=0.6, alpha=0.35)
                    ax.plot(steps, _smooth(values), color=colour, linewidth=1.6, label=prefix + "train")
                else:
                    ax.plot(steps, values, color=colour, marker="o", markersize=3.5, linewidth=1.2,
                            linestyle="--" if len(runs) > 1 else "-", label=prefix + split)
                drawn += 1
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if drawn > 1:
            ax.legend(fontsize=7)
    figure.suptitle(" vs ".join(labels), fontsize=11)
    figure.tight_layout()
    output = target
    os.makedirs(os.path.dirname(output), exist_ok=True)
    from perceiver import media

    with media._replacing(output) as temporary:  # whole or not at all
        figure.savefig(temporary, dpi=100)
    plt.close(figure)
    return output


def _run_labels(workdirs: Sequence[str]) -> List[str]:
    """Each run's folder name, or its path where two runs share a name."""
    names = [os.path.basename(w.rstrip(os.sep)) or w for w in workdirs]
    return [w if names.count(n) > 1 else n for n, w in zip(names, workdirs)]


def main(argv: Optional[Sequence[str]] = None, prog: str = "perceiver plot") -> int:
    """`WORKDIR [WORKDIR ...] [-o PNG]`: draws the curves, prints the image's path; returns the exit status.

    0: written; 2: no metrics, no matplotlib, or a file that cannot be
    written (one line on stderr).
    """
    parser = argparse.ArgumentParser(
        prog=prog, description="Draw a run's train and eval curves into a PNG (several runs: over each other)."
    )
    parser.add_argument("workdir", nargs="+", help="the run's folder (with metrics.jsonl); several to compare")
    parser.add_argument(
        "-o", "--output", metavar="PNG", help="the image (default WORKDIR/curves.png; needed for several runs)"
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    try:
        print(f"curves of {', '.join(args.workdir)} drawn in {plot(args.workdir, args.output)}")
    except ImportError:
        from perceiver import _messages

        print(f"{prog}: error: plotting needs matplotlib: {_messages.install_hint('train')}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
