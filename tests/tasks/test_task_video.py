"""perceiver.tasks.video and models.video_autoencoder_parts, on the small model.

The small variant (4 frames of 16x16, 64 audio samples per frame, 8 per
patch, 7 classes) with its recorded checkpoint; expected outputs come from
`video_autoencoder`'s own apply, decoding every query at once.
"""

import math

import jax
import numpy as np
import pytest

import reference_fixtures as ref
from perceiver import checkpoint, labels, models
from perceiver.tasks import video as video_task

FACTORY, SIZES = ref.SMALL_FACTORIES["video_autoencoding"]
FRAMES, SIDE, SPF = SIZES["num_frames"], SIZES["image_size"], SIZES["audio_samples_per_frame"]
CLIP_SAMPLES = FRAMES * SPF
# 1024 pixels and 32 audio patches per clip: 5 calls of 205 + 7 queries, so
# the last call is padded in both modalities.
CHUNK_SIZE = 250


@pytest.fixture(scope="module")
def weights():
    return checkpoint.load(ref.checkpoint_path("video_autoencoding"))


# Traces of the fixture's compiled encode and decode, counted by a spy.
TRACES = {"encode": 0, "decode": 0}
_PARTS = models.video_autoencoder_parts


def _spied_parts(**sizes):
    """`models.video_autoencoder_parts` whose apply functions count their calls.

    The task calls them only inside its jitted functions: once per trace.
    """
    parts = _PARTS(**sizes)

    def counted(name):
        def apply(*args, **kwargs):
            TRACES[name] += 1
            return getattr(parts.apply, name)(*args, **kwargs)

        return apply

    spied = models.VideoAutoencoderParts(encode=counted("encode"), decode=counted("decode"))
    return parts._replace(apply=spied)


@pytest.fixture(scope="module")
def autoencoder(weights):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models, "video_autoencoder_parts", _spied_parts)
        return video_task.VideoAutoencoder(*weights, chunk_size=CHUNK_SIZE, **SIZES)


@pytest.fixture(scope="module")
def whole_model(weights):
    """One clip through `video_autoencoder`, every output decoded in one call."""
    model = models.video_autoencoder(**SIZES)
    apply = jax.jit(model.apply)

    def run(frames, audio):
        out, _ = apply(*weights, None, frames[None], audio[None, :, None])
        return jax.tree_util.tree_map(lambda x: np.asarray(x)[0], out)

    return run


def random_video(num_frames, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (num_frames, SIDE, SIDE, 3)).astype(np.float32)


def random_audio(num_samples, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, num_samples).astype(np.float32)


# -- models.video_autoencoder_parts ------------------------------------------


def test_parts_build_video_autoencoders_tree():
    inputs, _ = ref.recorded("video_autoencoding")
    args = ref.factory_inputs("video_autoencoding", inputs)
    key = jax.random.PRNGKey(0)
    whole = jax.eval_shape(models.video_autoencoder(**SIZES).init, key, *args)
    parts = jax.eval_shape(models.video_autoencoder_parts(**SIZES).init, key, *args)
    assert jax.tree_util.tree_structure(parts) == jax.tree_util.tree_structure(whole)
    assert list(parts[0]) == list(whole[0])  # Same creation order too.
    assert jax.tree_util.tree_leaves(parts) == jax.tree_util.tree_leaves(whole)


def test_parts_build_the_published_tree():
    images = np.zeros((1, 16, 224, 224, 3), np.float32)
    audio = np.zeros((1, 16 * 1920, 1), np.float32)
    subsampling = {"image": np.arange(4), "audio": np.arange(4)}
    init = models.video_autoencoder_parts().init
    params, state = jax.eval_shape(init, jax.random.PRNGKey(0), images, audio, subsampling)
    recorded = ref.param_trees()["video_autoencoding"]["full"]
    assert ref.tree_spec(params) == recorded["params"]
    assert ref.tree_spec(state) == recorded["state"]


@pytest.mark.slow
def test_parts_init_gives_video_autoencoders_values():
    inputs, _ = ref.recorded("video_autoencoding")
    args = ref.factory_inputs("video_autoencoding", inputs)
    key = jax.random.PRNGKey(7)
    whole = jax.jit(models.video_autoencoder(**SIZES).init)(key, *args)
    parts = jax.jit(models.video_autoencoder_parts(**SIZES).init)(key, *args)
    jax.tree_util.tree_map(np.testing.assert_array_equal, parts, whole)


def test_parts_encode_then_decode_reproduce_reference(weights, folds):
    """The recorded output is the reference's for the second of 4 chunks.

    The pixels' RGB projection is folded into the decoder (checked), so this
    ties the folded path to the reference.
    """
    inputs, expected = ref.recorded("video_autoencoding")
    images, audio, subsampling = ref.factory_inputs("video_autoencoding", inputs)
    parts = models.video_autoencoder_parts(**SIZES)
    latents, _ = jax.jit(parts.apply.encode)(*weights, None, images, audio)
    assert latents.shape == (1, SIZES["num_latents"], SIZES["num_latent_channels"])
    out, _ = jax.jit(parts.apply.decode)(*weights, None, latents, subsampling)
    assert folds == [True]
    for key in ("image", "audio", "label"):
        scale = np.abs(expected[key]).max()
        np.testing.assert_allclose(out[key], expected[key], rtol=1e-5, atol=1e-5 * scale)


def test_parts_reject_bad_arguments(weights):
    parts = models.video_autoencoder_parts(**SIZES)
    with pytest.raises(TypeError, match="num_frame"):
        models.video_autoencoder_parts(num_frame=4)
    latents = np.zeros((1, SIZES["num_latents"], SIZES["num_latent_channels"]), np.float32)
    with pytest.raises(ValueError, match="subsampling may only"):
        parts.apply.decode(*weights, None, latents, {"video": np.arange(3)})
    with pytest.raises(ValueError, match="images must be"):
        parts.apply.encode(*weights, None, np.zeros((1, 3, SIDE, SIDE, 3)), np.zeros((1, 192, 1)))


# -- VideoAutoencoder ---------------------------------------------------------


def test_chunk_plan_bounds_queries_per_call():
    for pixels, audio, size in [(1024, 32, 250), (802816, 1920, 8192), (10, 3, 2), (5, 0, 4)]:
        calls, per_pixel, per_audio = video_task._chunk_plan(pixels, audio, size)
        assert per_pixel + per_audio <= size
        assert calls * per_pixel >= pixels and calls * per_audio >= audio
        assert calls == 1 or math.ceil(pixels / (calls - 1)) + math.ceil(audio / (calls - 1)) > size


def test_chunked_decoding_equals_decoding_all_at_once(autoencoder, whole_model):
    assert autoencoder.decode_calls_per_clip == 5
    frames, audio = random_video(FRAMES), random_audio(CLIP_SAMPLES)
    result = autoencoder(frames, audio)
    expected = whole_model(frames, audio)
    np.testing.assert_allclose(
        result.video, expected["image"].reshape(FRAMES, SIDE, SIDE, 3), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(result.audio, expected["audio"], rtol=1e-5, atol=1e-5)
    probabilities = np.exp(expected["label"]) / np.exp(expected["label"]).sum()
    np.testing.assert_allclose(result.label_probabilities[0], probabilities, rtol=1e-5)


def test_encoder_runs_once_per_clip_and_compiles_once(autoencoder, monkeypatch):
    encoded, decoded = [], []
    encode, decode = autoencoder.encode, autoencoder.decode
    monkeypatch.setattr(autoencoder, "encode", lambda *a: encoded.append(1) or encode(*a))
    monkeypatch.setattr(autoencoder, "decode", lambda *a: decoded.append(1) or decode(*a))
    result = autoencoder(random_video(2 * FRAMES + 2), None)  # 3 clips, silent.
    assert len(encoded) == 3
    assert len(decoded) == 3 * autoencoder.decode_calls_per_clip
    assert result.audio.shape == ((2 * FRAMES + 2) * SPF,)
    np.testing.assert_array_equal(result.clip_starts, [0, FRAMES, 2 * FRAMES])
    # Every clip and chunk, in every test here, used one trace of each.
    assert TRACES == {"encode": 1, "decode": 1}


def test_clips_are_padded_then_trimmed(autoencoder, whole_model):
    """6 frames and 400 samples: a full clip, then frames 4, 5, 5, 5 with
    144 samples and 112 zeros."""
    frames, audio = random_video(FRAMES + 2, seed=3), random_audio(400, seed=4)
    result = autoencoder(frames, audio)
    assert result.video.shape == (FRAMES + 2, SIDE, SIDE, 3)
    assert result.audio.shape == (400,)
    first = whole_model(frames[:FRAMES], audio[:CLIP_SAMPLES])
    padded_audio = np.concatenate([audio[CLIP_SAMPLES:], np.zeros(112, np.float32)])
    second = whole_model(frames[[4, 5, 5, 5]], padded_audio)
    want_video = np.concatenate([first["image"], second["image"]]).reshape(-1, SIDE, SIDE, 3)
    np.testing.assert_allclose(result.video, want_video[: FRAMES + 2], rtol=1e-5, atol=1e-5)
    want_audio = np.concatenate([first["audio"], second["audio"]])[:400]
    np.testing.assert_allclose(result.audio, want_audio, rtol=1e-5, atol=1e-5)
    assert result.label_probabilities.shape == (2, SIZES["num_classes"])


def test_clips_stream_the_same_reconstruction(autoencoder):
    frames, audio = random_video(FRAMES + 1, seed=6), random_audio(300, seed=7)
    whole = autoencoder(frames, audio)
    with pytest.raises(ValueError, match="mono"):  # At the call, before iterating.
        autoencoder.clips(frames, np.zeros((3, 3), np.float32))
    clips = list(autoencoder.clips(frames, audio))
    assert [c.start for c in clips] == [0, FRAMES]
    assert [len(c.video) for c in clips] == [FRAMES, 1]
    assert [len(c.audio) for c in clips] == [CLIP_SAMPLES, 300 - CLIP_SAMPLES]
    np.testing.assert_array_equal(np.concatenate([c.video for c in clips]), whole.video)
    np.testing.assert_array_equal(np.concatenate([c.audio for c in clips]), whole.audio)
    np.testing.assert_array_equal(clips[1].label_probabilities, whole.label_probabilities[1])


def test_audio_longer_than_video_adds_clips(autoencoder):
    result = autoencoder((random_video(3) * 255).astype(np.uint8), random_audio(600)[:, None])
    assert result.video.shape == (3, SIDE, SIDE, 3)
    assert result.audio.shape == (600,)
    assert len(result.labels) == 3  # ceil(600 / 256) clips.
    clips = autoencoder.clips(np.zeros((3, SIDE, SIDE, 3)), np.zeros(600))
    assert [len(c.video) for c in clips] == [3, 0, 0]


def test_top_k_labels(autoencoder):
    result = autoencoder(random_video(FRAMES), random_audio(CLIP_SAMPLES), top_k=3)
    probabilities = result.label_probabilities[0]
    order = np.argsort(-probabilities)[:3]
    assert result.labels[0] == [(str(i), pytest.approx(probabilities[i])) for i in order]
    top = [p for _, p in result.labels[0]]
    assert top == sorted(top, reverse=True)
    assert probabilities.sum() == pytest.approx(1, abs=1e-5)
    many = autoencoder(random_video(FRAMES), None, top_k=100)
    assert len(many.labels[0]) == SIZES["num_classes"]


def test_from_pretrained_reads_a_checkpoint_file():
    path = str(ref.checkpoint_path("video_autoencoding"))
    autoencoder = video_task.VideoAutoencoder.from_pretrained(path, chunk_size=64, **SIZES)
    assert autoencoder.decode_calls_per_clip == 17  # ceil(1056 / 64) = 17: 61 + 2 per call.
    with pytest.raises(checkpoint.CheckpointError, match="video_autoencoding.pystate"):
        video_task.VideoAutoencoder.from_pretrained(path, **dict(SIZES, num_latents=8))


def test_kinetics_names_for_700_classes():
    sizes = dict(SIZES, num_classes=700)
    params, state = models.parameter_shapes(FACTORY, **sizes)
    params = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), params)
    autoencoder = video_task.VideoAutoencoder(params, state, **sizes)
    assert autoencoder.class_names == labels.kinetics700_labels()


def test_bad_inputs_are_rejected(autoencoder, weights):
    with pytest.raises(ValueError, match="center_crop_and_resize"):
        autoencoder(np.zeros((4, SIDE + 1, SIDE, 3), np.float32))
    with pytest.raises(TypeError, match="dtype int32"):
        autoencoder(np.zeros((4, SIDE, SIDE, 3), np.int32))
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        autoencoder(random_video(4) * 255)
    with pytest.raises(ValueError, match="mono"):
        autoencoder(random_video(4), np.zeros((CLIP_SAMPLES, 2), np.float32))
    with pytest.raises(ValueError, match="chunk_size must be >= 2"):
        video_task.VideoAutoencoder(*weights, chunk_size=1, **SIZES)
    with pytest.raises(checkpoint.CheckpointError, match="differences"):
        video_task.VideoAutoencoder(*weights, **dict(SIZES, num_classes=8))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_are_refused_before_encoding(autoencoder, monkeypatch, bad):
    def encode(*args):
        raise AssertionError("encoded a clip of bad input")

    monkeypatch.setattr(autoencoder, "encode", encode)
    video = random_video(4)
    video[1, 2, 3] = bad
    with pytest.raises(ValueError, match=r"^video has 3 non-finite values \(NaN or Inf\)\.$"):
        autoencoder(video)
    audio = random_audio(CLIP_SAMPLES)
    audio[[5, 9]] = bad
    with pytest.raises(ValueError, match=r"^audio has 2 non-finite values \(NaN or Inf\)\.$"):
        autoencoder(random_video(4), audio)
    with pytest.raises(ValueError, match="audio has 2 non-finite values"):
        autoencoder.clips(random_video(4), audio[:, None])
    # float64 values past float32's range are Inf to the model.
    with pytest.raises(ValueError, match="audio has 1 non-finite value"):
        autoencoder(random_video(4), np.array([0.0, 1e39]))


def test_helpers_refuse_non_finite_inputs():
    video = np.zeros((2, 20, 16, 3), np.float32)
    video[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="video has 1 non-finite value"):
        video_task.center_crop_and_resize(video, 16)
    with pytest.raises(ValueError, match="audio has 1 non-finite value"):
        video_task.prepare_audio(np.array([[0.0, np.inf]]), 48000, 25)


def test_center_crop_and_resize():
    video = np.random.default_rng(0).uniform(0, 255, (2, 20, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(video_task.center_crop_and_resize(video, 16), video[:, 2:18])
    constant = np.full((1, 30, 40, 3), 7, np.uint8)
    out = video_task.center_crop_and_resize(constant, 16)
    assert out.shape == (1, 16, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, 7)
    # Half-pixel centres: output column j samples input column 5 + (j + 0.5) * 30 / 16 - 0.5.
    ramp = np.broadcast_to(np.arange(40, dtype=np.float32)[None, None, :, None], (1, 30, 40, 1))
    out = video_task.center_crop_and_resize(ramp, 16)
    want = 5 + (np.arange(16) + 0.5) * 30 / 16 - 0.5
    np.testing.assert_allclose(out[0, 3, 1:-1, 0], want[1:-1], rtol=1e-5)


def test_prepare_audio():
    stereo = np.stack([np.linspace(-1, 1, 480), np.zeros(480)], axis=1)
    same = video_task.prepare_audio(stereo, 48000, fps=25)
    np.testing.assert_allclose(same, np.linspace(-1, 1, 480) / 2, rtol=1e-6)
    # 30 fps: 57600 samples per second; a ramp stays a ramp on the new grid.
    ramp = np.arange(4800, dtype=np.float32)
    out = video_task.prepare_audio(ramp, 48000, fps=30)
    assert out.shape == (5760,)
    np.testing.assert_allclose(out[:-2], np.arange(5760)[:-2] * 48000 / 57600, rtol=1e-6)
    with pytest.raises(ValueError, match="must be > 0"):
        video_task.prepare_audio(ramp, 0, fps=25)


# -- psnr ---------------------------------------------------------------------


def test_psnr_matches_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0, 1, (5, 6, 3)), rng.uniform(0, 1, (5, 6, 3))
    mse = np.square(a - b).mean()
    assert video_task.psnr(a, b) == pytest.approx(10 * np.log10(1 / mse))
    assert video_task.psnr(np.zeros(4), np.full(4, 0.1)) == pytest.approx(20)
    # Audio in [-1, 1]: peak to peak 2, so 20 log10(2) dB above max_value=1.
    x, y = rng.uniform(-1, 1, 100), rng.uniform(-1, 1, 100)
    assert video_task.psnr(x, y, max_value=2) - video_task.psnr(x, y) == pytest.approx(
        20 * np.log10(2)
    )
    assert video_task.psnr(a, a) == float("inf")
    with pytest.raises(ValueError, match="one shape"):
        video_task.psnr(a, b[:2])
    with pytest.raises(ValueError, match="max_value"):
        video_task.psnr(a, b, max_value=0)
