"""perceiver.convert.to_hf and `perceiver convert`: ours -> transformers' format, and back.

Offline and without torch, on the tiny fixtures of tests/data/hf (see
test_convert_hf.py): HF -> ours -> HF gives the fixture's tensors back
exactly, and the command converts both ways into files the tasks take. The
slow test at the end loads what `to_hf` wrote with transformers itself.
"""

import os

import jax
import numpy as np
import pytest

from perceiver import checkpoint, cli, convert, hub, models
from perceiver.checkpoint import CheckpointError

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data", "hf")
ARCHS = ("mlm", "learned", "fourier", "conv", "flow", "video")

pytest.importorskip("safetensors", reason="needs safetensors (pip install 'perceiver-io-jax[hf]')")
from safetensors import numpy as st_numpy  # noqa: E402


def _read(name):
    """`(config, factory, sizes, params, state)` of a fixture, as from_hf reads it."""
    return convert._read_hf(os.path.join(DATA, name), weights_name=None, conv_kernel_layout="oihw")


def _tensors(folder):
    return st_numpy.load_file(os.path.join(folder, "model.safetensors"))


def _assert_same_tensors(got, want):
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert got[name].shape == want[name].shape, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.mark.parametrize("name", ARCHS)
def test_hf_to_ours_to_hf_gives_the_fixture_tensors_back(tmp_path, name):
    config, factory, sizes, params, state = _read(name)
    convert.to_hf(
        params,
        state,
        factory,
        sizes,
        tmp_path,
        dtype=config.get("dtype", "float32"),
        allow_deviations=True,
        fold_query_residual=False,
    )
    _assert_same_tensors(_tensors(tmp_path), convert.read_weights(os.path.join(DATA, name)))
    written = convert.read_config(tmp_path)
    assert written["architectures"] == config["architectures"]
    assert written["hidden_act"] == "gelu_new"  # Our tanh GELU, whatever the source had.
    assert convert.hf_factory(written) == convert.hf_factory(config)


def test_learned_decoder_query_is_folded_into_the_bias_and_back(tmp_path):
    _, factory, sizes, params, state = _read("learned")
    convert.to_hf(params, state, factory, sizes, tmp_path)
    written, original = _tensors(tmp_path), convert.read_weights(os.path.join(DATA, "learned"))
    query = original[convert._QUERY].astype(np.float32)[0]
    bias = original[convert._QUERY_BIAS].astype(np.float32)
    np.testing.assert_allclose(written[convert._QUERY_BIAS], bias - query, rtol=0, atol=1e-6)
    assert convert.read_config(tmp_path)[convert.FOLDED_QUERY_FIELD] is True
    # from_hf sees the field and unfolds: ours -> HF -> ours is our model again.
    _, back, back_state = convert.from_hf(tmp_path)
    assert back_state == {}
    for module in params:
        for leaf in params[module]:
            np.testing.assert_allclose(back[module][leaf], params[module][leaf], rtol=0, atol=1e-6)


def test_conv_kernel_layouts_invert_the_reading(tmp_path):
    _, factory, sizes, params, state = _read("conv")
    name = "perceiver.input_preprocessor.convnet.conv.weight"
    for layout in convert.CONV_KERNEL_LAYOUTS:
        convert.to_hf(
            params,
            state,
            factory,
            sizes,
            tmp_path / layout,
            conv_kernel_layout=layout,
            allow_deviations=True,
        )
        _, back, _ = convert.from_hf(tmp_path / layout, conv_kernel_layout=layout)
        module = "image_preprocessor/~/conv2_d_downsample/~/conv"
        np.testing.assert_array_equal(back[module]["w"], params[module]["w"])
    kernel = params[module]["w"]  # HWIO
    assert _tensors(tmp_path / "oiwh")[name].shape == kernel.shape[::-1]
    np.testing.assert_array_equal(_tensors(tmp_path / "oihw")[name], kernel.transpose(3, 2, 0, 1))


@pytest.mark.parametrize("name", sorted(hub.CHECKPOINTS))
def test_published_sizes_read_back_as_the_published_model(name):
    entry = hub.get(name)
    config = convert.hf_config(entry.factory, entry.factory_kwargs, allow_deviations=True)
    factory, sizes = convert.hf_factory(config)
    assert factory == entry.factory
    want = models.factory_sizes(entry.factory, **entry.factory_kwargs)
    got = models.factory_sizes(factory, **sizes)
    unused = convert._UNUSED_SIZES.get(want.get("variant"), ())
    assert {k: v for k, v in got.items() if k not in unused} == {
        k: v for k, v in want.items() if k not in unused
    }


def test_factory_functions_and_jax_trees_are_accepted(tmp_path):
    _, _, sizes, params, state = _read("mlm")
    as_jax = jax.tree_util.tree_map(jax.numpy.asarray, params)
    convert.to_hf(as_jax, None, models.masked_language_model, sizes, tmp_path)
    _assert_same_tensors(_tensors(tmp_path), convert.read_weights(os.path.join(DATA, "mlm")))


@pytest.mark.parametrize(
    "factory, sizes, match",
    [
        (
            "masked_language_model",
            {"num_heads": 4},
            "sizes num_heads=4 cannot be expressed in transformers' PerceiverForMaskedLM: "
            "expected 8",
        ),
        ("masked_language_model", {"qk_channels": 64}, "qk_channels=64 .*expected 256"),
        (
            "imagenet_classifier",
            {"variant": "fourier_position_encoding", "image_size": 64},
            "image_size=64 .*224x224",
        ),
        (
            "imagenet_classifier",
            {"variant": "learned_position_encoding", "learned_pos_channels": 32},
            "learned_pos_channels=32",
        ),
        ("optical_flow", {"num_bands": 16}, "num_bands=16"),
        ("video_autoencoder", {"audio_bands": 8}, "audio_bands=8"),
        (
            "imagenet_classifier",
            {"variant": "conv_preprocessing"},
            r"pads its 7x7/2 conv .*allow_deviations=True",
        ),
        ("imagenet_classifier", {}, "sizes must hold 'variant'"),
        ("text_classifier", {}, "factory must be one of"),
    ],
)
def test_models_transformers_cannot_express_are_refused_naming_why(factory, sizes, match):
    with pytest.raises(ValueError, match=match):
        convert.hf_config(factory, sizes)


def test_trees_that_do_not_fit_are_refused_before_writing(tmp_path):
    _, factory, sizes, params, state = _read("mlm")
    params = {m: dict(v) for m, v in params.items()}
    del params["embedding_decoder"]
    with pytest.raises(CheckpointError, match="missing embedding_decoder/bias"):
        convert.to_hf(params, state, factory, sizes, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_labels_become_id2label(tmp_path):
    _, factory, sizes, params, state = _read("fourier")
    names = ["cat", "dog", "emu", "gnu", "yak"]
    convert.to_hf(params, state, factory, sizes, tmp_path, labels=names)
    config = convert.read_config(tmp_path)
    assert config["id2label"] == {str(i): n for i, n in enumerate(names)}
    assert config["label2id"]["emu"] == 2
    with pytest.raises(ValueError, match="labels must be 5 str, one per class; got 2"):
        convert.hf_config(factory, sizes, labels=["cat", "dog"])


# ---------------------------------------------------------------------------
# `perceiver convert SRC DST`, both ways, and the tasks on what it wrote
# ---------------------------------------------------------------------------


def _cli(capsys, *argv):
    code = cli.main(["convert", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("suffix", [".pystate", ".safetensors"])
def test_command_converts_both_ways(tmp_path, capsys, suffix):
    ours = tmp_path / f"mlm{suffix}"
    code, out, err = _cli(capsys, os.path.join(DATA, "mlm"), ours)
    assert (code, err) == (0, ""), err
    assert str(ours) in out and ours.exists()
    description = checkpoint.read_description(ours)
    _, _, sizes, params, _ = _read("mlm")
    assert description["factory"] == "masked_language_model"
    assert description["sizes"] == sizes and description["tokenizer"] == {"kind": "bytes"}
    loaded, state = checkpoint.load(ours)
    assert state == {} and loaded.keys() == params.keys()
    code, out, err = _cli(capsys, ours, tmp_path / "hf")
    assert (code, err) == (0, ""), err
    assert "PerceiverForMaskedLM.from_pretrained" in out
    _assert_same_tensors(_tensors(tmp_path / "hf"), convert.read_weights(os.path.join(DATA, "mlm")))


def test_converted_classifier_runs_in_perceiver_classify(tmp_path, capsys):
    from perceiver import media
    from perceiver.tasks import imagenet

    ours = tmp_path / "fourier.pystate"
    assert _cli(capsys, os.path.join(DATA, "fourier"), ours)[0] == 0
    image = tmp_path / "image.png"
    media.write_image(str(image), np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8))
    code = cli.main(["classify", str(image), "--checkpoint", str(ours), "--top-k", "5"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert len(out.strip().splitlines()) == 6  # The image, then its 5 classes.
    # The task read the description alone (no sizes given): the model is the fixture's.
    model, params, state = convert.from_hf(os.path.join(DATA, "fourier"))
    classifier = imagenet.ImageClassifier.from_pretrained(str(ours))
    batch = classifier.preprocess(media.read_image(str(image)))[None]
    logits, _ = model.apply(params, state, None, batch)
    np.testing.assert_allclose(
        classifier.probabilities(batch), jax.nn.softmax(logits), rtol=1e-5, atol=1e-6
    )


def test_converted_mlm_runs_in_the_text_task(tmp_path, capsys):
    from perceiver.tasks import text

    ours = tmp_path / "mlm.pystate"
    assert _cli(capsys, os.path.join(DATA, "mlm"), ours)[0] == 0
    model = text.MaskedLanguageModel.from_pretrained(str(ours))  # Sizes from the description.
    (span,) = model.fill("hello ___ world", [(6, 9)]).spans
    assert len(span.predicted) == 3 and span.probabilities.shape == (3,)
    with pytest.raises(ValueError):  # The fixture's 16 positions, from the description.
        model.fill("x" * 17 + "_", [(17, 18)])


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda tmp: (tmp / "nothing", tmp / "out"),
            "is not a transformers save_pretrained directory, a checkpoint file",
        ),
        (lambda tmp: (tmp, tmp / "out.pystate"), "without config.json"),
        (lambda tmp: _bare_checkpoint(tmp), "has no description naming its model"),
        (
            lambda tmp: (os.path.join(DATA, "mlm"), tmp),
            "is a directory; give our checkpoint's file name",
        ),
    ],
)
def test_command_errors_are_one_line_with_status_2(tmp_path, capsys, make, match):
    src, dst = make(tmp_path)
    code, out, err = _cli(capsys, src, dst)
    assert code == 2 and out == ""
    assert err.startswith("perceiver: error: ") and err.count("\n") == 1
    assert match in err


def _bare_checkpoint(tmp):
    _, _, _, params, state = _read("mlm")
    checkpoint.save(tmp / "bare.pystate", params, state)
    return tmp / "bare.pystate", tmp / "out"


def test_command_converts_a_published_name_resolved_by_the_hub(tmp_path, capsys, monkeypatch):
    # Offline: "flow" stands for a tiny file of the fixture's sizes.
    _, factory, sizes, params, state = _read("flow")
    checkpoint.save(tmp_path / "flow.pystate", params, state)  # No description: the hub has it.
    entry = hub.Checkpoint("flow", "", "flow.pystate", factory, sizes)
    monkeypatch.setattr(hub, "get", lambda name: entry)
    monkeypatch.setattr(hub, "fetch", lambda name, **kwargs: tmp_path / "flow.pystate")
    code, out, err = _cli(capsys, "flow", tmp_path / "hf")
    assert code == 0, err
    assert "from the published 'flow'" in out
    _, back, _ = convert.from_hf(tmp_path / "hf")
    for module in params:
        for leaf in params[module]:
            np.testing.assert_array_equal(back[module][leaf], params[module][leaf])


def test_command_refuses_the_conv_classifier_without_allow_deviations(tmp_path, capsys):
    ours = tmp_path / "conv.pystate"
    assert _cli(capsys, os.path.join(DATA, "conv"), ours)[0] == 0
    code, _, err = _cli(capsys, ours, tmp_path / "hf")
    assert code == 2 and "--allow-deviations" in err and not (tmp_path / "hf").exists()
    code, _, err = _cli(capsys, ours, tmp_path / "hf", "--allow-deviations", "--dtype", "float16")
    assert code == 0, err
    # Our BatchNorm state came back as transformers' running statistics, in float16.
    _assert_same_tensors(
        _tensors(tmp_path / "hf"), convert.read_weights(os.path.join(DATA, "conv"))
    )


# ---------------------------------------------------------------------------
# Against transformers itself (needs torch and transformers)
# ---------------------------------------------------------------------------


def _random_trees(factory, sizes, seed):
    """Every leaf of our model random (so that a misplaced one shows), as numpy."""
    rng = np.random.default_rng(seed)
    want_params, want_state = models.parameter_shapes(factory, **sizes)

    def draw(name, spec):
        shape = tuple(spec.shape)
        if name == "counter":
            return np.asarray(5000, spec.dtype)
        if name == "w":
            return (rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)
        if name == "scale":
            return (1 + 0.2 * rng.normal(size=shape)).astype(np.float32)
        if name in ("b", "offset", "bias"):
            return (0.2 * rng.normal(size=shape)).astype(np.float32)
        return rng.normal(size=shape).astype(np.float32)

    params = {m: {n: draw(n, s) for n, s in leaves.items()} for m, leaves in want_params.items()}
    state = {m: {n: draw(n, s) for n, s in leaves.items()} for m, leaves in want_state.items()}
    for module, leaves in state.items():  # Positive variances; Haiku's hidden = average when warm.
        leaves["average"] = (
            np.abs(leaves["average"]) + 0.5 if "var_ema" in module else leaves["average"]
        )
        leaves["hidden"] = leaves["average"].copy()
    return params, state


@pytest.mark.slow
@pytest.mark.parametrize("name", ARCHS)
def test_transformers_loads_what_to_hf_wrote_and_computes_ours(tmp_path, name):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import make_hf_fixtures
    import test_convert_hf

    spec_cls, spec_config = make_hf_fixtures.SPECS[name][:2]
    factory, sizes = convert.hf_factory(
        dict(spec_config.to_dict(), architectures=[spec_cls.__name__])
    )
    params, state = _random_trees(factory, sizes, seed=7)
    convert.to_hf(params, state, factory, sizes, tmp_path, allow_deviations=True)
    hf_model = getattr(transformers, spec_cls.__name__).from_pretrained(tmp_path).eval()
    if (
        name == "conv"
    ):  # Its padding is transformers' one deviation left: undone as the fixtures do.
        hf_model = make_hf_fixtures.undo_deviations(hf_model, name, hf_model.config)
    arrays, run = make_hf_fixtures.inputs_for(name, np.random.default_rng(0), hf_model.config)
    with torch.no_grad():
        theirs = {k: v.numpy() for k, v in run(hf_model).items()}
    ours = test_convert_hf._apply(name, convert.build(factory, sizes), params, state, arrays)
    real = arrays["input_mask"].astype(bool) if name == "mlm" else None
    for key, value in ours.items():
        assert test_convert_hf._relative(value, theirs[key], real) < 1e-5, key
