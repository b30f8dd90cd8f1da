"""The wheel holds the package and its data only, and works installed outside the checkout."""

import os
import pathlib
import subprocess
import sys
import sysconfig
import venv
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _build_wheel(out: pathlib.Path) -> pathlib.Path:
    # pip builds it as `python -m build` would, in an isolated environment.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
        check=True, cwd=out,
    )
    (wheel,) = out.glob("perceiver_io_jax-*.whl")
    return wheel


@pytest.mark.slow
def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"perceiver"}
    for shipped in ("flow_small.pystate", "flow_small.json", "imagenet_labels.txt", "kinetics700_labels.txt"):
        assert f"perceiver/data/{shipped}" in names
    assert not [n for n in names if "/tests/" in n or "benchmarks" in n or n.endswith(".ipynb")]

    # A fresh venv with the wheel alone; the dependencies come from this
    # interpreter's site-packages on PYTHONPATH, where .pth files (and so the
    # checkout's editable install) are not read.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    env = dict(os.environ, PYTHONPATH=sysconfig.get_paths()["purelib"], PERCEIVER_CACHE=str(tmp_path / "cache"))
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True, env=env,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run(
        [str(python), "-c", "import perceiver; print(perceiver.__file__)"],
        cwd=work, env=env, check=True, capture_output=True, text=True,
    ).stdout.strip()
    assert pathlib.Path(where).is_relative_to(env_dir), where
    listed = subprocess.run(
        [str(bin_dir / "perceiver"), "list"], cwd=work, env=env, check=True, capture_output=True, text=True
    ).stdout
    assert "flow_small" in listed and str(env_dir) in listed
    demo = subprocess.run(
        [str(bin_dir / "perceiver"), "demo", "-o", "demo"], cwd=work, env=env, capture_output=True, text=True
    )
    assert demo.returncode == 0, demo.stderr
    assert "end-point error" in demo.stdout
    assert (work / "demo" / "flow.png").is_file()
