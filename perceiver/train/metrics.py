"""Metrics written per step to `WORKDIR/metrics.jsonl`, and to TensorBoard.

One JSON object per line: `{"step": 10, "split": "train", "loss": ...}`.
Read it with `pandas.read_json(path, lines=True)` or `json.loads` per line;
`perceiver train --plot WORKDIR` draws it (see `plot`). The same scalars go
to `WORKDIR/tensorboard/` (`tensorboard --logdir WORKDIR/tensorboard`)
through tensorboardX, which the 'train' extra installs (or PyTorch's writer);
without either, only the JSON lines are written.
"""

import json
import math
import os
from typing import Any, Mapping, Optional


def _tensorboard_writer(logdir: str, purge_step: Optional[int] = None):
    """A SummaryWriter from tensorboardX or PyTorch when one is installed, else None.

    `purge_step`: on resume, TensorBoard hides the events of the killed run
    from this step on (they are redone).
    """
    for module in ("tensorboardX", "torch.utils.tensorboard"):
        try:
            mod = __import__(module, fromlist=["SummaryWriter"])
            return mod.SummaryWriter(logdir, purge_step=purge_step)
        except Exception:  # not installed, or broken: TensorBoard is optional
            continue
    return None


def _plain(value: Any) -> Any:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return value
    return value if math.isfinite(value) else str(value)


class MetricsWriter:
    """Appends metrics to a JSON-lines file (and TensorBoard), on process 0 only.

    Args:
      workdir: the run's folder.
      resume_step: on resume, lines after this step (from the part of the
        killed run that will be redone) are dropped first.
      enabled: False on processes other than 0.
      redo_eval_at: also drop the evaluation lines of this step (an
        evaluation the resumed run does again).
    """

    def __init__(
        self,
        workdir: str,
        resume_step: Optional[int] = None,
        enabled: bool = True,
        redo_eval_at: Optional[int] = None,
    ):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        if resume_step is not None and os.path.exists(self.path):
            self._truncate(resume_step, redo_eval_at)
        self._file = open(self.path, "a", buffering=1)
        purge = resume_step + 1 if resume_step else None
        self._tb = _tensorboard_writer(os.path.join(workdir, "tensorboard"), purge)

    def _truncate(self, step: int, redo_eval_at: Optional[int] = None) -> None:
        kept = []
        with open(self.path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
                redone = record.get("split") == "eval" and record.get("step") == redo_eval_at
                if record.get("step", 0) <= step and not redone:
                    kept.append(line)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)

    def write(self, step: int, split: str, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split}
        record.update({k: _plain(v) for k, v in values.items()})
        self._file.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("step", "split") and isinstance(v, float):
                    self._tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read(path: str):
    """The records of a metrics.jsonl file, as a list of dicts."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
