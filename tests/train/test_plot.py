"""perceiver.train.plot: runs' metrics.jsonl drawn into one PNG."""

import json

import numpy as np
import pytest

from perceiver.train import plot

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

# matplotlib's first two default colours: one per run when runs are compared.
FIRST, SECOND = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)


def _run(folder, offset, with_accuracy=True):
    folder.mkdir(parents=True)
    with open(folder / "metrics.jsonl", "w") as f:
        for step in range(1, 41):
            record = {"step": step, "split": "train", "loss": 3.0 / step + offset, "learning_rate": 1e-3}
            if with_accuracy:
                record["accuracy"] = min(1.0, step / 40)
            f.write(json.dumps(record) + "\n")
            if step % 10 == 0:
                f.write(json.dumps({"step": step, "split": "eval", "loss": 3.2 / step + offset}) + "\n")
        f.write('{"step": 41, "split": "tr')  # a line cut short by a kill
    return folder


def _share_near(pixels, colour):
    return float(np.mean(np.all(np.abs(pixels.astype(int) - colour) < 12, axis=-1)))


def test_two_runs_share_each_panel_in_their_own_colours(tmp_path):
    f32, bf16 = _run(tmp_path / "f32", 0.0), _run(tmp_path / "bf16", 0.05, with_accuracy=False)
    out = plot.plot([f32, bf16], str(tmp_path / "compared.png"))
    pixels = np.asarray(Image.open(out).convert("RGB"))
    # Panels: loss, learning_rate, accuracy (one run has it): one row of three.
    assert pixels.shape == (300, 1260, 3)
    assert _share_near(pixels, FIRST) > 1e-3 and _share_near(pixels, SECOND) > 1e-3
    # One run alone: train blue, eval orange, as before.
    single = np.asarray(Image.open(plot.plot(str(f32))).convert("RGB"))
    assert single.shape == (300, 1260, 3) and _share_near(single, SECOND) > 1e-4


def test_several_runs_need_an_output_and_each_its_metrics(tmp_path, capsys):
    a, b = _run(tmp_path / "a", 0.0), _run(tmp_path / "b", 0.1)
    assert plot.main([str(a), str(b)]) == 2
    assert "name it with -o PNG" in capsys.readouterr().err
    assert plot.main([str(a), str(tmp_path / "missing"), "-o", str(tmp_path / "x.png")]) == 2
    assert "no metrics.jsonl in" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
    before = (a / "metrics.jsonl").read_bytes()
    assert plot.main([str(a), str(b), "-o", str(a / "metrics.jsonl")]) == 2
    assert "would replace the metrics it draws" in capsys.readouterr().err
    assert (a / "metrics.jsonl").read_bytes() == before
    assert plot.main([str(a), str(b), "-o", str(tmp_path / "ab.png")]) == 0
    assert "drawn in" in capsys.readouterr().out and (tmp_path / "ab.png").is_file()


def test_runs_of_the_same_folder_name_are_told_apart_by_path(tmp_path):
    labels = plot._run_labels(["/x/one/run", "/y/two/run", "/z/other"])
    assert labels == ["/x/one/run", "/y/two/run", "other"]
