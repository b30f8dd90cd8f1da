"""Classical baselines for the audio-classification and object-detection heads' data.

    python benchmarks/heads_baselines_b.py audio        # MFCC + logistic regression
    python benchmarks/heads_baselines_b.py detection    # HOG sliding window + logistic regression

audio: `datasets.spoken_words` (ten digit words, espeak-ng), speakers held
out (the first 16 of `SPEAKERS` train, the other 8 test). Features: 13 MFCCs
(numpy: 25 ms Hamming frames every 10 ms, 40 mel bands up to 8 kHz, log,
DCT-II) and their deltas, each resampled to 12 time steps and flattened;
scikit-learn's standardizer + logistic regression. Prints test accuracy.

detection: `datasets.copy_paste` digits on photos, 128 px; train photos
astronaut, coffee, chelsea, rocket; test photos china, flower (held out).
A sliding-window detector: HOG (scikit-image, 4 px cells, 2x2 blocks, 9
orientations) of windows of the training boxes' median aspect (32 x 24 px
after rescaling) at 7 scales, every cell; a logistic regression over 11
classes (10 digits + background) trained on the true boxes (with jitter)
and random background windows; a window's score is its best digit's
probability; per-class non-maximum suppression at IoU 0.3; the best 100
per image. Scored by `evaluation.detection.coco_map`.
Needs scikit-learn, scikit-image and espeak-ng (audio).
"""

import argparse
import tempfile
import time

import numpy as np

from perceiver import boxes as box_ops
from perceiver import media
from perceiver.datasets import audio_folders, coco, copy_paste, spoken_words
from perceiver.evaluation import detection


def _mel_filters(rate, n_fft, bands, high):
    def mel(f):
        return 2595 * np.log10(1 + f / 700)

    points = 700 * (10 ** (np.linspace(mel(0), mel(high), bands + 2) / 2595) - 1)
    bins = np.fft.rfftfreq(n_fft, 1 / rate)
    filters = np.zeros((bands, len(bins)))
    for b in range(bands):
        lo, mid, hi = points[b:b + 3]
        filters[b] = np.clip(np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)), 0, None)
    return filters


def mfcc(wave, rate=16000, coefficients=13, bands=40):
    """`[frames, coefficients]` MFCCs of `wave [samples]`."""
    frame, hop, n_fft = int(0.025 * rate), int(0.010 * rate), 512
    wave = np.append(wave[0], wave[1:] - 0.97 * wave[:-1])  # Pre-emphasis.
    count = 1 + max(0, (len(wave) - frame) // hop)
    index = np.arange(frame)[None, :] + hop * np.arange(count)[:, None]
    frames = wave[index] * np.hamming(frame)
    power = np.abs(np.fft.rfft(frames, n_fft)) ** 2 / n_fft
    log_mel = np.log(power @ _mel_filters(rate, n_fft, bands, rate / 2).T + 1e-10)
    k = np.arange(bands)
    dct = np.cos(np.pi / bands * (k[None, :] + 0.5) * np.arange(coefficients)[:, None])
    return log_mel @ dct.T


def _audio_features(waves, steps=12):
    out = []
    for wave in waves:
        c = mfcc(wave)
        d = np.gradient(c, axis=0)
        both = np.concatenate([c, d], 1)
        at = np.linspace(0, len(both) - 1, steps)
        out.append(np.stack([np.interp(at, np.arange(len(both)), col) for col in both.T], 1).ravel())
    return np.array(out)


def audio(variants=0):
    """MFCC + logistic regression on spoken digits, 8 voices held out; `variants`: as `vary_speakers`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_speakers = spoken_words.vary_speakers(spoken_words.SPEAKERS[:16], variants)
    test_speakers = spoken_words.SPEAKERS[16:]
    with tempfile.TemporaryDirectory() as folder:
        start = time.time()
        sets = []
        for name, speakers in (("train", train_speakers), ("test", test_speakers)):
            root = spoken_words.make_spoken_words(f"{folder}/{name}", speakers=speakers)
            sets.append(audio_folders.read_audio_folder(root, 16000, 16000))
        made = time.time() - start
    train, test = sets
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    model.fit(_audio_features(train.waves), train.labels)
    accuracy = (model.predict(_audio_features(test.waves)) == test.labels).mean()
    print(f"audio: spoken digits, {len(train.labels)} train clips ({len(train_speakers)} speakers), "
          f"{len(test.labels)} test clips ({len(test_speakers)} held-out speakers), made in {made:.0f} s")
    print(f"audio: MFCC + logistic regression test accuracy {accuracy:.3f} (chance 0.100)")


WINDOW = (32, 24)  # Rows, columns of a window after rescaling: 8 x 6 cells of 4 px.


def _hog_map(gray):
    from skimage.feature import hog

    return hog(gray, orientations=9, pixels_per_cell=(4, 4), cells_per_block=(2, 2), feature_vector=False)


def _window_feature(gray_crop):
    return _hog_map(copy_paste._resize(gray_crop, WINDOW)).ravel()


def _gray(image):
    return image.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255


def _train_detector(dataset, rng):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, labels = [], []
    for image, ann in zip(dataset.images, dataset.annotations):
        gray = _gray(media.read_image(image.path))
        size = gray.shape[0]
        for (x, y, w, h), label in zip(ann.boxes, ann.category_ids):
            for _ in range(3):
                jx, jy = rng.normal(0, 0.05, 2) * (w, h)
                x0, y0 = int(round(max(0, x + jx))), int(round(max(0, y + jy)))
                crop = gray[y0:int(round(y + h + jy)), x0:int(round(x + w + jx))]
                if min(crop.shape) >= 4:
                    features.append(_window_feature(crop))
                    labels.append(int(label))
        truth = box_ops.xywh_to_xyxy(ann.boxes)
        for _ in range(12):
            h = int(rng.uniform(10, 50))
            w = int(h * WINDOW[1] / WINDOW[0])
            x, y = rng.integers(0, size - w), rng.integers(0, size - h)
            if len(truth) and box_ops.pairwise_iou(np.array([[x, y, x + w, y + h]], float), truth).max() > 0.3:
                continue
            features.append(_window_feature(gray[y:y + h, x:x + w]))
            labels.append(0)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=3000))
    model.fit(np.array(features), np.array(labels))
    return model


def _nms(xyxy, scores, threshold=0.3):
    keep = []
    order = np.argsort(-scores)
    while len(order):
        keep.append(order[0])
        iou = box_ops.pairwise_iou(xyxy[order[:1]], xyxy[order[1:]])[0]
        order = order[1:][iou <= threshold]
    return np.array(keep, int)


def _detect(model, gray, heights=(14, 19, 24, 30, 36, 43, 50)):
    rows, cols = WINDOW[0] // 4 - 1, WINDOW[1] // 4 - 1  # Blocks per window.
    found, scores, labels = [], [], []
    for height in heights:
        factor = WINDOW[0] / height
        size = int(round(gray.shape[0] * factor))
        blocks = _hog_map(copy_paste._resize(gray, (size, size)))
        feats, where = [], []
        for by in range(blocks.shape[0] - rows + 1):
            for bx in range(blocks.shape[1] - cols + 1):
                feats.append(blocks[by:by + rows, bx:bx + cols].ravel())
                where.append((bx * 4 / factor, by * 4 / factor))
        if not feats:
            continue
        probs = model.predict_proba(np.array(feats))
        best = probs[:, 1:].argmax(1)
        for (x, y), k, p in zip(where, best, probs[np.arange(len(best)), best + 1]):
            found.append([x, y, WINDOW[1] / factor, height])
            scores.append(p)
            labels.append(model.classes_[k + 1])
    found, scores, labels = np.array(found), np.array(scores), np.array(labels)
    keep_all = []
    for label in np.unique(labels):
        idx = np.nonzero(labels == label)[0]
        idx = idx[scores[idx] > 0.05]
        keep_all.extend(idx[_nms(box_ops.xywh_to_xyxy(found[idx]), scores[idx])])
    keep_all = np.array(keep_all, int)
    keep_all = keep_all[np.argsort(-scores[keep_all])][:100]
    return detection.ImageDetections(found[keep_all], scores[keep_all], labels[keep_all])


def detection_baseline(train_images=200, test_images=60):
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        start = time.time()
        train = coco.read_coco(copy_paste.make_copy_paste_set(
            f"{folder}/train", ["astronaut", "coffee", "chelsea", "rocket"], train_images, seed=0,
            digit_split="train"))
        test = coco.read_coco(copy_paste.make_copy_paste_set(
            f"{folder}/test", ["china", "flower"], test_images, seed=1, digit_split="eval"))
        model = _train_detector(train, rng)
        trained = time.time() - start
        dets = [_detect(model, _gray(media.read_image(im.path))) for im in test.images]
    scores = detection.coco_map(test.annotations, dets)
    print(f"detection: copy-paste digits on photos, {train_images} train images (4 photos), "
          f"{test_images} test images (2 held-out photos); trained in {trained:.0f} s, "
          f"total {time.time() - start:.0f} s")
    print(f"detection: HOG sliding window + logistic regression mAP@0.5 {scores.map_50:.3f} "
          f"mAP@[.5:.95] {scores.map:.3f} mAP@0.75 {scores.map_75:.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["audio", "detection"])
    args = parser.parse_args()
    audio() if args.which == "audio" else detection_baseline()


if __name__ == "__main__":
    main()
