"""A picture of a run's curves: WORKDIR/metrics.jsonl drawn into a PNG with matplotlib.

    perceiver train --plot WORKDIR [-o curves.png]
    python -m perceiver.train.plot WORKDIR [-o curves.png]

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
from typing import Dict, List, Optional, Sequence, Tuple

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


def plot(workdir: str, output: Optional[str] = None) -> str:
    """Draws `workdir`'s metrics.jsonl into a PNG; returns its path.

    Args:
      workdir: the run's folder.
      output: the image (default WORKDIR/curves.png).

    Raises:
      FileNotFoundError: if the workdir has no metrics.jsonl.
      ValueError: if it holds no metric.
      ImportError: if matplotlib is not installed (the 'train' extra has it).
    """
    workdir = os.path.abspath(os.path.expanduser(workdir))
    source = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(source):
        raise FileNotFoundError(f"no metrics.jsonl in {workdir} to plot; train first.")
    curves = read_curves(source)
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    names = sorted(curves, key=_order)
    rows = -(-len(names) // COLUMNS)
    columns = min(COLUMNS, len(names))
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        for split, (steps, values) in sorted(curves[name].items(), key=lambda kv: kv[0] != "train"):
            if split == "train":
                line = ax.plot(steps, values, linewidth=0.6, alpha=0.35)[0]
                ax.plot(steps, _smooth(values), color=line.get_color(), linewidth=1.6, label="train")
            else:
                ax.plot(steps, values, marker="o", markersize=3.5, linewidth=1.2, label=split)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(curves[name]) > 1:
            ax.legend(fontsize=7)
    figure.suptitle(os.path.basename(workdir), fontsize=11)
    figure.tight_layout()
    output = os.path.abspath(os.path.expanduser(output or os.path.join(workdir, "curves.png")))
    os.makedirs(os.path.dirname(output), exist_ok=True)
    from perceiver import media

    with media._replacing(output) as temporary:  # whole or not at all
        figure.savefig(temporary, dpi=100)
    plt.close(figure)
    return output


def main(argv: Optional[Sequence[str]] = None, prog: str = "perceiver plot") -> int:
    """`WORKDIR [-o PNG]`: draws the curves, prints the image's path; returns the exit status.

    0: written; 2: no metrics, no matplotlib, or a file that cannot be
    written (one line on stderr).
    """
    parser = argparse.ArgumentParser(
        prog=prog, description="Draw a run's train and eval curves into a PNG."
    )
    parser.add_argument("workdir", help="the run's folder (with metrics.jsonl)")
    parser.add_argument("-o", "--output", metavar="PNG", help="the image (default WORKDIR/curves.png)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    try:
        print(f"curves of {args.workdir} drawn in {plot(args.workdir, args.output)}")
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
