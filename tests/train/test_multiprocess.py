"""Several processes on one machine (`jax.distributed` over loopback) train as one process does."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("grain")
pytest.importorskip("orbax.checkpoint")

from perceiver import checkpoint  # noqa: E402

# No batch operations (MixUp, CutMix act on each process's rows), so the
# global batches, and so every step, are the same on 1 process as on 2.
RUN = [
    "--config", "imagenet", "--tiny", "train.num_steps=6", "optimizer.warmup_steps=2", "train.log_every=1",
    "data.cutmix=false", "data.mixup_alpha=0", "train.progress=false",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(extra)
    return env


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r["loss"] for r in rows if r.get("split", "train") == "train" and "loss" in r]


@pytest.mark.slow  # three trainings in subprocesses: about a minute alone, minutes on a busy machine
def test_two_processes_train_the_same_model_as_one(tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    cli = [sys.executable, "-m", "perceiver.train.main"]
    subprocess.run(cli + RUN + ["--workdir", one], check=True, env=_env(), timeout=600,
                   capture_output=True)
    port = _free_port()
    procs = [
        subprocess.Popen(
            cli + RUN + ["--workdir", two],
            env=_env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                     JAX_PROCESS_ID=str(i)),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "on 2 device(s) (2 process(es))" in outs[0]
    a, b = _losses(one), _losses(two)
    assert len(a) == 6 and len(b) == 6
    np.testing.assert_allclose(b, a, rtol=1e-4)
    pa, _ = checkpoint.load(os.path.join(one, "model.pystate"))
    pb, _ = checkpoint.load(os.path.join(two, "model.pystate"))
    assert pa.keys() == pb.keys()
    for module in pa:
        for name in pa[module]:
            np.testing.assert_allclose(pb[module][name], pa[module][name], rtol=1e-3, atol=1e-5)
