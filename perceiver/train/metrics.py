"""Metrics written per step to `WORKDIR/metrics.jsonl`, and to TensorBoard if installed.

One JSON object per line: `{"step": 10, "split": "train", "loss": ...}`.
Read it with `pandas.read_json(path, lines=True)` or `json.loads` per line.
"""

import json
import math
import os
from typing import Any, Mapping, Optional


def _tensorboard_writer(logdir: str):
    """A SummaryWriter from tensorboardX or PyTorch when one is installed, else None."""
    for module in ("tensorboardX", "torch.utils.tensorboard"):
        try:
            mod = __import__(module, fromlist=["SummaryWriter"])
            return mod.SummaryWriter(logdir)
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
    """

    def __init__(self, workdir: str, resume_step: Optional[int] = None, enabled: bool = True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        if resume_step is not None and os.path.exists(self.path):
            self._truncate(resume_step)
        self._file = open(self.path, "a", buffering=1)
        self._tb = _tensorboard_writer(os.path.join(workdir, "tensorboard"))

    def _truncate(self, step: int) -> None:
        kept = []
        with open(self.path) as f:
            for line in f:
                try:
                    if json.loads(line).get("step", 0) <= step:
                        kept.append(line)
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
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
