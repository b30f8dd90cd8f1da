"""`perceiver flow VIDEO -o FLOW.mp4`: the flow of each consecutive frame pair, as a colour video."""

import os

import numpy as np
import pytest

from perceiver import cli, media
from perceiver.tasks import flow as flow_lib

PHOTO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "flow", "astronaut_160.png")


def _clip(height, width, frames=5, step=3):
    """Frames of a real photo whose content moves `step` px right per frame."""
    photo = media.read_image(PHOTO)
    return np.stack(
        [photo[40 : 40 + height, 60 - step * t : 60 - step * t + width] for t in range(frames)]
    )


def test_video_command_writes_the_flow_of_each_pair(tmp_path, offline, capsys):
    clip = tmp_path / "clip.mp4"
    media.write_video(clip, _clip(64, 80), fps=10)
    out = tmp_path / "flow.mp4"
    assert cli.main(["flow", str(clip), "-o", str(out), "--max-flow", "4"]) == 0
    summary = capsys.readouterr().out
    assert "flow of 4 frame pairs 80x64 (3 pyramid levels)" in summary
    video, fps, audio, _ = media.read_video(out)
    assert video.shape == (4, 64, 80, 3) and fps == pytest.approx(10) and audio is None
    # Motion (3, 0) on the scale of 4 px is the wheel's red, 3/4 saturated (a
    # flow beyond the scale would be drawn darker); the video codec blurs
    # colours a little.
    want = flow_lib.flow_to_color(np.array([3.0, 0.0]), max_flow=4).astype(int)
    assert want[0] == 255 and 50 < want[1] == want[2] < 80, want
    median = np.median(video[:, 8:-8, 8:-8].reshape(-1, 3), axis=0)
    assert np.abs(median - want).max() < 30, (median, want)


def test_video_of_odd_size_is_padded_for_h264_and_bad_uses_fail_early(tmp_path, offline, capsys):
    clip = tmp_path / "clip.gif"
    media.write_video(clip, _clip(35, 41, frames=3), fps=5)
    out = tmp_path / "flow.mp4"
    assert cli.main(["flow", str(clip), "-o", str(out), "--levels", "1"]) == 0
    assert "flow of 2 frame pairs 41x35 (1 pyramid level)" in capsys.readouterr().out
    video, _, _, _ = media.read_video(out)
    assert video.shape == (2, 36, 42, 3)
    # The added row and column repeat their neighbours (up to the codec's loss).
    assert np.abs(video[:, -1].astype(int) - video[:, -2]).mean() < 8
    assert np.abs(video[:, :, -1].astype(int) - video[:, :, -2]).mean() < 8

    image = tmp_path / "a.png"
    media.write_image(image, _clip(16, 16, frames=1)[0])
    for argv, message in (
        ([str(clip), "-o", str(out), "--flo", str(tmp_path / "x.flo")], "--flo writes the flow of one pair"),
        ([str(image), "-o", str(out)], "no second frame is given"),
        ([str(clip), "-o", str(tmp_path / "f.png")], "-o"),
        ([str(image), str(image), "-o", str(tmp_path / "f.png"), "--max-frames", "3"], "--max-frames is for a video"),
        ([str(clip), "-o", str(out), "--levels", "0"], "--levels must be >= 1"),
    ):
        assert cli.main(["flow"] + argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
