"""perceiver.convert.to_hf and `perceiver convert`: ours -> transformers' format, and back.

Offline and without torch, on the tiny fixtures of tests/data/hf (see
test_convert_hf.py): HF -> ours -> HF gives the fixture's tensors back
exactly, and the command converts both ways into files the tasks take. The
slow test at the end loads what `to_hf` wrote with transformers itself.
"""

import os
import shutil

import jax
import numpy as np
import pytest

from perceiver import checkpoint, cli, convert, hub, models
from perceiver.hf import config as hf_config_table
from perceiver.hf import names as hf_names
from perceiver.hf import reading as hf_reading
from perceiver.hf import writing as hf_writing
from perceiver.checkpoint import CheckpointError

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/
DATA = os.path.join(TESTS, "data", "hf")
ARCHS = ("mlm", "text", "learned", "fourier", "conv", "flow", "video")

pytest.importorskip("safetensors", reason="needs safetensors (pip install 'perceiver-io-jax[hf]')")
from safetensors import numpy as st_numpy  # noqa: E402


def _read(name):
    """`(config, factory, sizes, params, state)` of a fixture, as from_hf reads it."""
    return hf_reading._read_hf(os.path.join(DATA, name), weights_name=None, conv_kernel_layout="oihw")


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
    query = original[hf_names._QUERY].astype(np.float32)[0]
    bias = original[hf_names._QUERY_BIAS].astype(np.float32)
    np.testing.assert_allclose(written[hf_names._QUERY_BIAS], bias - query, rtol=0, atol=1e-6)
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
    unused = hf_config_table._UNUSED_SIZES.get(want.get("variant"), ())
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
            "transformers' PerceiverForMaskedLM cannot hold this model: its code fixes "
            "num_heads=8 .*; this model has num_heads=4",
        ),
        ("masked_language_model", {"qk_channels": 64}, "fixes qk_channels=256 .*has qk_channels=64"),
        (
            "imagenet_classifier",
            {"variant": "fourier_position_encoding", "image_size": 64, "num_bands": 8},
            "fixes image_size=224 .*224x224 grid.; num_bands=64 .*has image_size=64, num_bands=8",
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
        ("byte_language_model", {}, "transformers has no Perceiver class for our byte_language_model"),
        ("nothing", {}, "factory must be one of"),
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


@pytest.mark.parametrize("suffix", [".pystate", ".safetensors"])
def test_command_converts_both_ways(tmp_path, capsys, suffix, run_cli):
    ours = tmp_path / f"mlm{suffix}"
    code, out, err = run_cli("convert", os.path.join(DATA, "mlm"), ours)
    assert (code, err) == (0, ""), err
    assert str(ours) in out and ours.exists()
    description = checkpoint.read_description(ours)
    _, _, sizes, params, _ = _read("mlm")
    assert description["factory"] == "masked_language_model"
    assert description["sizes"] == sizes and description["tokenizer"] == {"kind": "bytes"}
    loaded, state = checkpoint.load(ours)
    assert state == {} and loaded.keys() == params.keys()
    code, out, err = run_cli("convert", ours, tmp_path / "hf")
    assert (code, err) == (0, ""), err
    assert "PerceiverForMaskedLM.from_pretrained" in out
    _assert_same_tensors(_tensors(tmp_path / "hf"), convert.read_weights(os.path.join(DATA, "mlm")))


def test_converted_classifier_runs_in_perceiver_classify(tmp_path, capsys, run_cli):
    from perceiver import media
    from perceiver.tasks import imagenet

    ours = tmp_path / "fourier.pystate"
    assert run_cli("convert", os.path.join(DATA, "fourier"), ours)[0] == 0
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


def test_converted_mlm_runs_in_the_text_task(tmp_path, capsys, run_cli):
    from perceiver.tasks import text

    ours = tmp_path / "mlm.pystate"
    assert run_cli("convert", os.path.join(DATA, "mlm"), ours)[0] == 0
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
def test_command_errors_are_one_line_with_status_2(tmp_path, capsys, make, match, run_cli):
    src, dst = make(tmp_path)
    code, out, err = run_cli("convert", src, dst)
    assert code == 2 and out == ""
    assert err.startswith("perceiver: error: ") and err.count("\n") == 1
    assert match in err


def _bare_checkpoint(tmp):
    _, _, _, params, state = _read("mlm")
    checkpoint.save(tmp / "bare.pystate", params, state)
    return tmp / "bare.pystate", tmp / "out"


def test_command_converts_a_published_name_resolved_by_the_hub(tmp_path, capsys, monkeypatch, run_cli):
    # Offline: "flow" stands for a tiny file of the fixture's sizes.
    _, factory, sizes, params, state = _read("flow")
    checkpoint.save(tmp_path / "flow.pystate", params, state)  # No description: the hub has it.
    entry = hub.Checkpoint("flow", "", "flow.pystate", factory, sizes)
    monkeypatch.setattr(hub, "get", lambda name: entry)
    monkeypatch.setattr(hub, "fetch", lambda name, **kwargs: tmp_path / "flow.pystate")
    code, out, err = run_cli("convert", "flow", tmp_path / "hf")
    assert code == 0, err
    assert "from the published 'flow'" in out
    _, back, _ = convert.from_hf(tmp_path / "hf")
    for module in params:
        for leaf in params[module]:
            np.testing.assert_array_equal(back[module][leaf], params[module][leaf])


def test_command_refuses_the_conv_classifier_without_allow_deviations(tmp_path, capsys, run_cli):
    ours = tmp_path / "conv.pystate"
    assert run_cli("convert", os.path.join(DATA, "conv"), ours)[0] == 0
    code, _, err = run_cli("convert", ours, tmp_path / "hf")
    assert code == 2 and "--allow-deviations" in err and not (tmp_path / "hf").exists()
    code, _, err = run_cli("convert", ours, tmp_path / "hf", "--allow-deviations", "--dtype", "float16")
    assert code == 0, err
    # Our BatchNorm state came back as transformers' running statistics, in float16.
    _assert_same_tensors(
        _tensors(tmp_path / "hf"), convert.read_weights(os.path.join(DATA, "conv"))
    )


# ---------------------------------------------------------------------------
# What transformers' pipelines read beside the model, and the round trip
# ---------------------------------------------------------------------------

PHOTO = os.path.join(TESTS, "data", "flow", "astronaut_160.png")


def _json(path):
    import json

    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _described_fourier(tmp, **task):
    """The fourier fixture as our checkpoint, described as a trained classifier would be."""
    _, factory, sizes, params, state = _read("fourier")
    path = tmp / "mine.pystate"
    description = {
        "factory": factory,
        "sizes": sizes,
        "labels": ["cat", "dog", "emu", "gnu", "yak"],
        "task": dict(task),
        "description": "trained here",
        "trained": {"recipe": "imagenet", "step": 7},
    }
    checkpoint.save(path, params, state, description=description)
    return path


def test_image_classifier_folder_holds_the_image_processor_config(tmp_path, capsys, run_cli):
    src = _described_fourier(tmp_path, crop_fraction=0.7, min_crop_size=224)
    code, out, err = run_cli("convert", src, tmp_path / "hf")
    assert code == 0, err
    assert "pipeline('image-classification'" in out and "no least crop" in out
    processor = _json(tmp_path / "hf" / convert.PREPROCESSOR_FILE)
    assert processor["image_processor_type"] == "PerceiverImageProcessor"
    # transformers keeps size / crop_size of the shorter side: our crop_fraction.
    assert processor["size"] == {"height": 224, "width": 224}
    assert 224 / processor["crop_size"]["height"] == pytest.approx(0.7, rel=1e-12)
    assert processor["crop_size"]["height"] == processor["crop_size"]["width"]
    assert processor["resample"] == 3  # PIL's BICUBIC
    assert processor["rescale_factor"] == pytest.approx(1 / 255)
    np.testing.assert_allclose(np.array(processor["image_mean"]) * 255, [123.675, 116.28, 103.53])
    np.testing.assert_allclose(np.array(processor["image_std"]) * 255, [58.395, 57.12, 57.375])
    assert all(processor[k] is True for k in ("do_center_crop", "do_resize", "do_rescale", "do_normalize"))
    # The published crop, 224 of 256, is written as the whole number transformers uses.
    default = convert.hf_preprocessor_config({"image_size": 224})
    assert default["crop_size"] == {"height": 256, "width": 256}


def test_language_model_folder_holds_the_tokenizer_files(tmp_path, capsys, run_cli):
    from perceiver.bytes_tokenizer import BytesTokenizer

    code, out, err = run_cli("convert", os.path.join(DATA, "mlm"), tmp_path / "mlm.pystate")
    assert code == 0, err
    code, out, err = run_cli("convert", tmp_path / "mlm.pystate", tmp_path / "hf")
    assert code == 0, err
    assert "pipeline('fill-mask'" in out and "add_special_tokens" in out
    tokenizer = _json(tmp_path / "hf" / "tokenizer_config.json")
    special = _json(tmp_path / "hf" / "special_tokens_map.json")
    assert tokenizer["tokenizer_class"] == "PerceiverTokenizer"
    assert tokenizer["model_max_length"] == 16  # The fixture's max_seq_len.
    ours = BytesTokenizer()
    ids = {name: getattr(ours, name) for name in ("pad_token", "bos_token", "eos_token",
                                                  "mask_token", "cls_token", "sep_token")}
    for name, token_id in ids.items():
        content = tokenizer["added_tokens_decoder"][str(token_id)]["content"]
        assert tokenizer[name] == special[name] == content, name
    assert sorted(int(i) for i in tokenizer["added_tokens_decoder"]) == list(range(6))
    assert ours.to_int(b"\0")[0] == 6  # bytes follow the six, as in PerceiverTokenizer


@pytest.mark.parametrize("name", ["flow", "video"])
def test_models_without_a_transformers_processor_get_config_and_weights_alone(tmp_path, name):
    _, factory, sizes, params, state = _read(name)
    convert.to_hf(params, state, factory, sizes, tmp_path / "hf")
    assert sorted(os.listdir(tmp_path / "hf")) == ["config.json", "model.safetensors"]


def test_ours_to_hf_to_ours_keeps_the_description_and_the_outputs(tmp_path, capsys, run_cli):
    from perceiver import media
    from perceiver.tasks import imagenet

    src = _described_fourier(tmp_path, crop_fraction=0.7, min_crop_size=100)
    assert run_cli("convert", src, tmp_path / "hf")[0] == 0
    code, _, err = run_cli("convert", tmp_path / "hf", tmp_path / "back.pystate")
    assert code == 0, err
    back = checkpoint.read_description(tmp_path / "back.pystate")
    assert back == checkpoint.read_description(src)
    # The same model on the same input: the same outputs.
    for (m, leaves), (m2, leaves2) in zip(
        sorted(checkpoint.load(src)[0].items()), sorted(checkpoint.load(tmp_path / "back.pystate")[0].items())
    ):
        assert m == m2 and all(np.array_equal(leaves[k], leaves2[k]) for k in leaves)
    photo = media.read_image(PHOTO)
    want = imagenet.ImageClassifier.from_pretrained(str(src)).preprocess(photo)
    got = imagenet.ImageClassifier.from_pretrained(str(tmp_path / "back.pystate")).preprocess(photo)
    np.testing.assert_array_equal(got, want)
    # The crop matters (on the 160-px photo: 112 px kept, where the default keeps 140).
    side = 112
    top = (160 - side + 1) // 2
    crop = photo[top : top + side, top : top + side]
    np.testing.assert_allclose(want, imagenet.preprocess(crop, 224, 1.0), rtol=0, atol=1e-5)
    assert not np.allclose(want, imagenet.preprocess(photo, 224, 224 / 256), atol=0.1)


def test_what_transformers_files_say_wins_over_a_stale_description(tmp_path, capsys, run_cli):
    import json

    src = _described_fourier(tmp_path, crop_fraction=0.7)
    assert run_cli("convert", src, tmp_path / "hf")[0] == 0
    processor_file = tmp_path / "hf" / convert.PREPROCESSOR_FILE
    processor = _json(processor_file)
    processor["crop_size"] = 280  # An int, as older files spell it: 224 / 280 = 0.8.
    processor_file.write_text(json.dumps(processor))
    assert run_cli("convert", tmp_path / "hf", tmp_path / "a.pystate")[0] == 0
    edited = checkpoint.read_description(tmp_path / "a.pystate")
    assert edited["task"] == {"crop_fraction": 0.8}
    assert "trained" not in edited and edited["converted_from"]["format"] == "transformers"
    # Weights changed in transformers (here: rewritten as float16): the training record goes.
    processor["crop_size"] = 320
    processor_file.write_text(json.dumps(processor))
    assert run_cli("convert", src, tmp_path / "hf16", "--dtype", "float16")[0] == 0
    config = convert.read_config(tmp_path / "hf16")
    kept = config[convert.DESCRIPTION_FIELD]
    config[convert.DESCRIPTION_FIELD] = dict(kept, weights_sha256="0" * 64)
    (tmp_path / "hf16" / "config.json").write_text(json.dumps(config))
    assert run_cli("convert", tmp_path / "hf16", tmp_path / "b.pystate")[0] == 0
    changed = checkpoint.read_description(tmp_path / "b.pystate")
    assert "trained" not in changed and changed["labels"] == ["cat", "dog", "emu", "gnu", "yak"]
    assert changed["task"]["crop_fraction"] == pytest.approx(0.7)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("do_center_crop", False, "do_center_crop=False cannot be held"),
        ("resample", 2, "resample=2 cannot be held .*expected 3"),
        ("image_mean", [0.5, 0.5, 0.5], "image_mean=.*ImageNet's"),
        ("size", {"height": 224, "width": 200}, "size=.* expected a square"),
        ("size", 192, "size=192 is not the model's input side 224"),
        ("crop_size", 200, "crop_size=200 is smaller than size=224"),
        ("image_processor_type", "ViTImageProcessor", "expected one of PerceiverImageProcessor"),
    ],
)
def test_preprocessing_our_task_cannot_do_is_refused_before_writing(
    tmp_path, capsys, field, value, match, run_cli
):
    import json
    import re

    folder = tmp_path / "hf"
    shutil.copytree(os.path.join(DATA, "fourier"), folder)
    processor = convert.hf_preprocessor_config({"image_size": 224})
    processor[field] = value
    (folder / convert.PREPROCESSOR_FILE).write_text(json.dumps(processor))
    code, out, err = run_cli("convert", folder, tmp_path / "mine.pystate")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert re.search(match, err), err
    assert not (tmp_path / "mine.pystate").exists() and not (tmp_path / "mine.json").exists()


def test_another_tokenizer_is_refused(tmp_path, capsys, run_cli):
    folder = tmp_path / "hf"
    shutil.copytree(os.path.join(DATA, "mlm"), folder)
    (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "BertTokenizer"}')
    code, _, err = run_cli("convert", folder, tmp_path / "mine.pystate")
    assert code == 2 and "tokenizer_class='BertTokenizer'" in err and "PerceiverTokenizer" in err
    assert not (tmp_path / "mine.pystate").exists()


def test_text_classifier_converts_both_ways_with_its_tokenizer(tmp_path, capsys, run_cli):
    from perceiver.tasks import text_classification

    ours = tmp_path / "text.pystate"
    assert run_cli("convert", os.path.join(DATA, "text"), ours)[0] == 0
    description = checkpoint.read_description(ours)
    assert description["factory"] == "text_classifier" and description["tokenizer"] == {"kind": "bytes"}
    assert description["sizes"]["num_classes"] == 3 and description["sizes"]["qk_channels"] == 8
    code, out, err = run_cli("convert", ours, tmp_path / "hf", "--dtype", "float16")  # As the fixture.
    assert code == 0, err
    assert "PerceiverForSequenceClassification" in out and "pipeline('text-classification'" in out
    assert _json(tmp_path / "hf" / "tokenizer_config.json")["tokenizer_class"] == "PerceiverTokenizer"
    _assert_same_tensors(_tensors(tmp_path / "hf"), convert.read_weights(os.path.join(DATA, "text")))
    # The task runs it (test_convert_hf.py compares its outputs with transformers').
    model = text_classification.TextClassifier.from_pretrained(str(ours))
    assert len(model.classify(["hello"], top_k=3)[0]) == 3


def test_which_recipes_models_transformers_can_hold():
    from perceiver.train import recipes

    held = set()
    for name, recipe in recipes.RECIPES.items():
        for tiny in (False, True):
            sizes = dict(recipes.get_config(name, tiny).model)
            if sizes.get("num_classes") == 0:  # Taken from the data at training time.
                sizes["num_classes"] = 2
            try:
                convert.hf_config(recipe.kind.factory, sizes)
            except ValueError as e:
                assert "--tiny" in str(e) or "no Perceiver class" in str(e), (name, tiny, str(e))
                continue
            held.add((name, "tiny" if tiny else "full"))
    # What the README says: the full-size image, MLM and flow recipes, and the text classifier.
    assert held == {
        ("imagenet", "full"), ("finetune_image", "full"), ("mlm", "full"), ("flow", "full"),
        ("finetune_text", "full"), ("finetune_text", "tiny"),
    }


def test_outputs_never_replace_the_input(tmp_path, capsys, run_cli):
    # Our checkpoint saved as model.safetensors, converted into its own folder.
    _, factory, sizes, params, state = _read("mlm")
    own = tmp_path / "own"
    own.mkdir()
    checkpoint.save(own / "model.safetensors", params, state, description={"factory": factory, "sizes": sizes})
    before = (own / "model.safetensors").read_bytes()
    code, _, err = run_cli("convert", own / "model.safetensors", own)
    assert code == 2 and "would replace the input" in err, err
    assert (own / "model.safetensors").read_bytes() == before
    assert sorted(os.listdir(own)) == ["model.json", "model.safetensors"]
    # A transformers folder converted to a file whose description would be its config.json.
    folder = tmp_path / "hf"
    shutil.copytree(os.path.join(DATA, "mlm"), folder)
    config = (folder / "config.json").read_bytes()
    for dst in (folder / "config.pystate", folder / "model.safetensors"):
        code, _, err = run_cli("convert", folder, dst)
        assert code == 2 and "would replace a file of the input folder" in err, err
    assert (folder / "config.json").read_bytes() == config
    assert not (folder / "config.pystate").exists()


def test_a_folder_of_another_model_is_refused_and_writing_is_all_or_nothing(tmp_path, capsys, monkeypatch):
    _, factory, sizes, params, state = _read("mlm")
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / convert.PREPROCESSOR_FILE).write_text("{}")  # left by an image classifier
    with pytest.raises(FileExistsError, match="holds preprocessor_config.json of another model"):
        convert.to_hf(params, state, factory, sizes, folder)
    assert sorted(os.listdir(folder)) == [convert.PREPROCESSOR_FILE]
    # A failure while writing (here the third file) leaves no file and no new folder.
    calls = []
    original = os.replace

    def failing(a, b):
        calls.append(b)
        if len(calls) == 3:
            raise OSError("disk full")
        return original(a, b)

    fresh = tmp_path / "fresh"
    monkeypatch.setattr(hf_writing.os, "replace", failing)
    monkeypatch.setattr(hf_writing.os, "fsync", lambda fd: None)
    with pytest.raises(OSError, match="disk full"):
        hf_writing._write_files(str(fresh), {"a": b"1", "b": b"2", "c": b"3"})
    monkeypatch.undo()
    assert not fresh.exists() or sorted(os.listdir(fresh)) == ["a", "b"]


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


@pytest.mark.slow
def test_transformers_pipelines_load_the_folders_and_answer_as_ours(tmp_path, capsys, run_cli):
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from perceiver import media
    from perceiver.tasks import imagenet, text

    # A classifier whose answers move with the photo (random weights, 10 classes).
    sizes = dict(
        variant="fourier_position_encoding", num_classes=10, num_latents=8,
        num_latent_channels=32, num_blocks=1, num_self_attends_per_block=1, num_self_attend_heads=2,
    )
    params, state = _random_trees("imagenet_classifier", sizes, seed=3)
    labels = [f"class {i}" for i in range(10)]
    src = tmp_path / "mine.pystate"
    description = {"factory": "imagenet_classifier", "sizes": sizes, "labels": labels,
                   "task": {"crop_fraction": 0.7}}
    checkpoint.save(src, params, state, description=description)
    assert run_cli("convert", src, tmp_path / "hf")[0] == 0
    pipe = transformers.pipeline("image-classification", model=str(tmp_path / "hf"))
    theirs = pipe(PHOTO, top_k=3)
    ours = imagenet.ImageClassifier.from_pretrained(str(src)).classify(media.read_image(PHOTO), top_k=3)[0]
    assert [r["label"] for r in theirs] == [name for name, _ in ours]
    # PIL's bicubic (antialiased) is not TensorFlow's: inputs, not answers, differ a little.
    np.testing.assert_allclose([r["score"] for r in theirs], [p for _, p in ours], atol=5e-3)

    assert run_cli("convert", os.path.join(DATA, "mlm"), tmp_path / "mlm.pystate")[0] == 0
    assert run_cli("convert", tmp_path / "mlm.pystate", tmp_path / "hf_mlm")[0] == 0
    fill = transformers.pipeline("fill-mask", model=str(tmp_path / "hf_mlm"))
    (span,) = text.MaskedLanguageModel.from_pretrained(str(tmp_path / "mlm.pystate")).fill(
        "hello _orld", [(6, 7)]
    ).spans
    top = fill("hello [MASK]orld", top_k=1, tokenizer_kwargs={"add_special_tokens": False})[0]
    assert top["token"] - 6 == span.predicted[0]
    assert top["score"] == pytest.approx(float(span.probabilities[0]), abs=1e-5)

    from perceiver.tasks import text_classification

    assert run_cli("convert", os.path.join(DATA, "text"), tmp_path / "text.pystate")[0] == 0
    assert run_cli("convert", tmp_path / "text.pystate", tmp_path / "hf_text")[0] == 0
    classify = transformers.pipeline("text-classification", model=str(tmp_path / "hf_text"))
    theirs = classify("hello world", top_k=3, add_special_tokens=False)
    ours = text_classification.TextClassifier.from_pretrained(str(tmp_path / "text.pystate")).classify(
        ["hello world"], top_k=3
    )[0]
    assert [int(r["label"].split("_")[1]) for r in theirs] == [int(name) for name, _ in ours]
    np.testing.assert_allclose([r["score"] for r in theirs], [p for _, p in ours], atol=1e-5)
