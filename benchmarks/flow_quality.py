"""Optical flow on real photographs with known motion, per pyramid setting.

Pairs are made from photographs that ship inside scikit-image (and
scikit-learn, when installed), never from drawn images:
- translations of 3-8 px, sub-pixel and non-integer translations, and
  affine motions (rotation, zoom, shear plus translation). Both frames are
  sampled from the photo by cubic-spline interpolation, frame 1 at the
  identity and frame 2 through the inverse motion, so the true flow of every
  pixel of frame 1 is exact: `M(p) - p`;
- the real stereo pair `skimage.data.stereo_motorcycle()` (Middlebury 2014,
  disparity 7-60 px at full size): flow from left to right is (-d, 0) where
  the disparity d is known; at full and quarter size.
It reports the mean end-point error (EPE) and its ratio to zero flow's for
`levels=1` (single-scale), several fixed levels and the automatic choice,
and the time of a 640 x 480 pair (best of 3, after compilation).

With `--opencv`, OpenCV's classical methods run on the same pairs with the
same error: DIS (`cv2.DISOpticalFlow`, presets ultrafast, fast and medium)
and Farneback (`cv2.calcOpticalFlowFarneback` with the parameters of
OpenCV's own `samples/python/opt_flow.py`, `FARNEBACK` below), both on the
frames converted to grayscale uint8. Their flow, like ours, goes from frame 1
to frame 2, (dx, dy) in pixels. A second table gives the wall time per pair
(the median over a row's pairs, after one untimed call per frame size) of
each method, the model's automatic levels included. cv2 is imported only
then (`pip install opencv-python-headless`; without it those rows are left
out with a note).

    pip install scikit-image scikit-learn
    python benchmarks/flow_quality.py                    # the shipped model
    python benchmarks/flow_quality.py --checkpoint PATH  # another flow model
    python benchmarks/flow_quality.py --quick            # 2 photos, fewer motions
    python benchmarks/flow_quality.py --opencv           # and OpenCV's DIS, Farneback
"""

import argparse
import json
import os
import sys
import time

import numpy as np

# Motions (dx, dy) in pixels, or affine (angle degrees, log zoom, shear, dx, dy).
TRANSLATIONS = [(3, 0), (0, -4), (5, 3), (-6, 4), (8, -2), (-3, -7)]
SUBPIXEL = [(0.5, 0.25), (-1.5, 0.75), (3.3, -2.6), (-4.7, 5.2), (6.4, 1.9)]
AFFINE = [(2.0, 0.02, 0.0, 3.0, -1.0), (-3.0, -0.03, 0.02, -2.0, 4.0), (0.0, 0.04, 0.0, 0.0, 0.0)]
FRAME = (240, 320)  # the frames cut from each photo (H, W), a quarter of VGA
# calcOpticalFlowFarneback's arguments as in OpenCV's samples/python/opt_flow.py.
FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


def opencv_methods():
    """{name: flow(frame1, frame2)} for OpenCV's classical methods; {} without cv2."""
    try:
        import cv2
    except ImportError:
        print("cv2 not installed (pip install opencv-python-headless): the OpenCV rows are left out",
              file=sys.stderr)
        return {}

    def gray(frame):
        return cv2.cvtColor(np.round(frame).clip(0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)

    def dis(preset):
        solver = cv2.DISOpticalFlow_create(preset)
        return lambda first, second: solver.calc(gray(first), gray(second), None)

    def farneback(first, second):
        return cv2.calcOpticalFlowFarneback(gray(first), gray(second), None, **FARNEBACK)

    return {
        "DIS ultrafast": dis(cv2.DISOpticalFlow_PRESET_ULTRAFAST),
        "DIS fast": dis(cv2.DISOpticalFlow_PRESET_FAST),
        "DIS medium": dis(cv2.DISOpticalFlow_PRESET_MEDIUM),
        "Farneback": farneback,
    }


def photos(quick: bool):
    """(name, uint8 [H, W, 3]) of photographs shipped with scikit-image / scikit-learn."""
    from skimage import data

    names = ["astronaut", "coffee", "chelsea", "rocket"]
    out = [(n, getattr(data, n)()) for n in names]
    try:
        from sklearn.datasets import load_sample_image

        out += [(n, load_sample_image(n + ".jpg")) for n in ("china", "flower")]
    except ImportError:
        print("scikit-learn not installed: its two sample photos are left out", file=sys.stderr)
    return out[:2] if quick else out


def motion_matrix(angle, log_zoom, shear, dx, dy, center):
    """The affine motion p -> A (p - c) + c + t as (A, b) with M(p) = A p + b."""
    a = np.deg2rad(angle)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    matrix = rot @ np.array([[np.exp(log_zoom), shear], [0.0, np.exp(log_zoom)]])
    return matrix, center - matrix @ center + np.array([dx, dy])


def make_pair(photo, motion):
    """Frames [2, H, W, 3] float in [0, 255] cut from the photo's centre, and the true flow."""
    from scipy import ndimage

    height, width = FRAME
    top = (photo.shape[0] - height) // 2
    left = (photo.shape[1] - width) // 2
    ys, xs = np.mgrid[:height, :width].astype(np.float64)
    p = np.stack([xs.ravel(), ys.ravel()], 1)
    motion = tuple(motion)
    if len(motion) == 2:
        motion = (0.0, 0.0, 0.0) + motion
    center = np.array([(width - 1) / 2, (height - 1) / 2])
    matrix, offset = motion_matrix(*motion, center)
    # frame2(q) = frame1(M^-1 q): frame 2 samples the photo at M^-1(q).
    back = (p - offset) @ np.linalg.inv(matrix).T
    photo = photo.astype(np.float64)
    coeffs = [ndimage.spline_filter(photo[..., c], order=3) for c in range(3)]

    def sample(points):
        coords = [points[:, 1] + top, points[:, 0] + left]
        return np.stack(
            [ndimage.map_coordinates(c, coords, order=3, prefilter=False, mode="mirror") for c in coeffs],
            -1,
        ).reshape(height, width, 3)

    frames = np.stack([sample(p), sample(back)]).clip(0, 255)
    flow = (p @ matrix.T + offset - p).reshape(height, width, 2)
    return frames, flow


def stereo(scale: int):
    """The motorcycle stereo pair at 1/scale size: frames, flow (-d, 0) and where d is known."""
    from skimage import data

    left, right, disparity = data.stereo_motorcycle()
    valid = np.isfinite(disparity) & (disparity > 0)
    if scale > 1:
        h, w = (s // scale * scale for s in left.shape[:2])

        def pool(a):
            a = a[:h, :w].astype(np.float64)
            return a.reshape(h // scale, scale, w // scale, scale, *a.shape[2:]).mean(axis=(1, 3))

        left, right = pool(left), pool(right)
        known = pool(valid.astype(np.float64))
        disparity = pool(np.where(valid, disparity, 0.0)) / np.maximum(known, 1e-9) / scale
        valid = known > 0.999  # every full-size pixel of the block known
    flow = np.stack([-np.where(valid, disparity, 0.0), np.zeros_like(disparity)], -1)
    return np.stack([left, right]).astype(np.float64), flow, valid


def epe(pred, truth, valid=None):
    e = np.linalg.norm(pred - truth, axis=-1)
    return float(e[valid].mean() if valid is not None else e.mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a flow checkpoint (default: the shipped small model)")
    parser.add_argument("--levels", default="1,2,3,4,auto", help="comma-separated settings")
    parser.add_argument("--quick", action="store_true", help="2 photos, 2 motions per kind")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--no-time", action="store_true", help="skip the 640 x 480 timing")
    parser.add_argument("--opencv", action="store_true",
                        help="also OpenCV's DIS (3 presets) and Farneback on the same pairs")
    args = parser.parse_args()

    from perceiver import cli
    from perceiver.tasks import flow as flow_lib

    path = args.checkpoint or cli._bundled_flow_model()
    estimator = flow_lib.OpticalFlow.from_pretrained(path)
    settings = [None if s == "auto" else int(s) for s in args.levels.split(",")]
    kinds = {"translation 3-8 px": TRANSLATIONS, "sub-pixel / non-integer": SUBPIXEL, "affine": AFFINE}
    if args.quick:
        kinds = {k: v[:2] for k, v in kinds.items()}

    methods = opencv_methods() if args.opencv else {}
    rows = {}  # case -> {setting or method name: [epe, zero]}
    times = {}  # case -> {"auto" or method name: [seconds per pair]}
    sizes = {}  # case -> frame size
    warmed = set()
    auto_levels = {}

    def add(case, setting, error, zero):
        rows.setdefault(case, {}).setdefault(setting, []).append((error, zero))

    def timed(case, key, function, frames):
        """function(frame1, frame2), its time added to the case's, after one untimed call per size."""
        if (key, frames.shape) not in warmed:
            function(frames[0], frames[1])  # compilation (the model), first-call set-up
            warmed.add((key, frames.shape))
        start = time.perf_counter()
        flow = function(frames[0], frames[1])
        times.setdefault(case, {}).setdefault(key, []).append(time.perf_counter() - start)
        return flow

    def run_settings(case, frames, truth, valid=None):
        zero = epe(np.zeros_like(truth), truth, valid)
        sizes[case] = f"{frames.shape[2]}x{frames.shape[1]}"
        errors = {}
        auto = estimator.levels_for(*frames.shape[1:3])
        # 'auto' is one of the levels: computed once when that level is also asked for.
        for setting in sorted(settings, key=lambda s: s is None):
            levels = auto if setting is None else setting
            if levels not in errors:
                if levels == auto and None in settings:
                    pred = timed(case, "auto", lambda a, b: estimator(a, b, levels=levels), frames)
                else:
                    pred = estimator(frames[0], frames[1], levels=levels)
                errors[levels] = epe(pred, truth, valid)
            add(case, setting, errors[levels], zero)
        for name, method in methods.items():
            add(case, name, epe(timed(case, name, method, frames), truth, valid), zero)

    for name, photo in photos(args.quick):
        for kind, motions in kinds.items():
            for motion in motions:
                run_settings(kind, *make_pair(photo, motion))
        print(f"done {name}", file=sys.stderr)
    auto_levels["photos"] = estimator.levels_for(*FRAME)
    for scale, case in ((1, "stereo, full 741x500"), (4, "stereo, quarter 185x125")):
        frames, truth, valid = stereo(scale)
        auto_levels[case] = estimator.levels_for(*frames.shape[1:3])
        run_settings(case, frames, truth, valid)
        print(f"done {case}", file=sys.stderr)

    def label(setting):
        if isinstance(setting, str):
            return setting  # an OpenCV method
        return "auto" if setting is None else f"levels={setting}"

    print(f"model: {path} (tile {estimator.tile_shape}, max_flow {estimator.max_flow}); "
          f"auto levels: {auto_levels}")
    columns = settings + list(methods)
    header = "| case | zero flow EPE | " + " | ".join(label(s) for s in columns) + " |"
    print(header)
    print("|" + "---|" * (2 + len(columns)))
    summary = {}
    for case, by_setting in rows.items():
        zero = float(np.mean([z for _, z in by_setting[columns[0]]]))
        cells = []
        for setting in columns:
            errors = [e for e, _ in by_setting[setting]]
            mean = float(np.mean(errors))
            # The ratio of means (mean EPE over mean zero-flow EPE).
            cells.append(f"{mean:.2f} ({mean / zero:.2f})")
            summary.setdefault(case, {})[label(setting)] = {"epe": mean, "ratio": mean / zero}
        summary[case]["zero"] = zero
        print(f"| {case} | {zero:.2f} | " + " | ".join(cells) + " |")
    if times:
        keys = list(next(iter(times.values())))
        note = ""
        if methods:
            import cv2

            note = f", cv2 {cv2.__version__} with {cv2.getNumThreads()} threads"
        print(f"\nmilliseconds per pair, median over the row's pairs ({os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}{note})")
        print("| case | size | " + " | ".join("model, auto levels" if k == "auto" else k for k in keys) + " |")
        print("|" + "---|" * (2 + len(keys)))
        for case, by_key in times.items():
            medians = {k: float(np.median(by_key[k])) for k in keys}
            for k, t in medians.items():
                summary[case].setdefault(label(None) if k == "auto" else k, {})["s_per_pair"] = t
            print(f"| {case} | {sizes[case]} | " + " | ".join(f"{1000 * medians[k]:.1f}" for k in keys) + " |")

    if not args.no_time:
        from skimage import data
        from skimage.transform import resize

        photo = (resize(data.rocket(), (490, 650), anti_aliasing=True) * 255).astype(np.uint8)
        first, second = photo[5:485, 5:645], photo[2:482, 10:650]
        estimator(first, second)  # compile
        times = []
        for _ in range(3):
            start = time.perf_counter()
            estimator(first, second)
            times.append(time.perf_counter() - start)
        summary["time_640x480_s"] = min(times)
        summary["levels_640x480"] = estimator.levels_for(480, 640)
        print(f"640x480 pair, auto levels ({estimator.levels_for(480, 640)}): best of 3 "
              f"{min(times):.2f} s (all: {', '.join(f'{t:.2f}' for t in times)}); "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
