"""perceiver.convert.from_hf against tiny transformers checkpoints (no torch needed).

The fixtures in tests/data/hf/<arch>/ were written by make_hf_fixtures.py with
torch and transformers: a save_pretrained directory and io.npz holding the
inputs, transformers' own outputs (`hf_*`) and its outputs with its
deviations from DeepMind's reference undone (`undone_*`). Measured max
|ours - undone| / max|undone|: 2.8e-7 (mlm, real positions), 3.1e-7 (text), 6.1e-7
(learned), 2.3e-7 (fourier), 4.2e-7 (conv), 9.2e-7 (flow), 3.2e-6 (video);
see docs/guides/hf_measurements.md for the distances to transformers' own outputs.
"""

import json
import os
import pickle
import re
import shutil
import struct
import zipfile

import jax
import numpy as np
import pytest

from perceiver import convert, models
from perceiver.checkpoint import CheckpointError

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/
DATA = os.path.join(TESTS, "data", "hf")
ARCHS = ("mlm", "text", "learned", "fourier", "conv", "flow", "video")

try:
    import safetensors  # noqa: F401

    HAVE_SAFETENSORS = True
except ImportError:
    HAVE_SAFETENSORS = False
needs_safetensors = pytest.mark.skipif(
    not HAVE_SAFETENSORS, reason="needs safetensors (pip install 'perceiver-io-jax[hf]')"
)

# How far transformers' own outputs are from ours, as max|diff| / max|theirs|:
# (at least, at most). GELU alone (exact erf vs tanh) moves them ~1e-4.
HF_DISTANCE = {
    "mlm": (1e-5, 1e-2),  # GELU; real positions only (padded ones: see the mask test).
    "text": (1e-5, 1e-2),  # GELU.
    "learned": (0.1, np.inf),  # The decoder query residual.
    "fourier": (1e-5, 1e-2),  # GELU.
    "conv": (1e-3, np.inf),  # Conv/pool padding: 55x55 vs 56x56 inputs.
    "flow": (0.0, 1e-5),  # Saved with hidden_act="gelu_new": no deviation.
    "video": (1e-5, 1e-2),  # GELU.
}


def _apply(name, model, params, state, io):
    """Our outputs on the fixture's inputs, keyed as in io.npz."""
    if name in ("mlm", "text"):
        args = (io["inputs"], io["input_mask"])
    elif name == "video":
        points = dict(image=io["subsample_image"], audio=io["subsample_audio"])
        args = (io["images"], io["audio"], points)
    else:
        args = (io["images"],)
    out, _ = jax.jit(model.apply)(params, state, None, *args)
    if name == "video":
        return {k: np.asarray(v) for k, v in out.items()}
    if name == "flow":  # Ours scales the flow as the reference notebook does.
        return {"flow": np.asarray(out) / models.FLOW_OUTPUT_SCALE}
    return {"logits": np.asarray(out)}


def _relative(ours, ref, where=None):
    if where is not None:
        ours, ref = ours[where], ref[where]
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


@pytest.fixture(scope="module")
def converted():
    cache = {}

    def get(name):
        if name not in cache:
            folder = os.path.join(DATA, name)
            cache[name] = convert.from_hf(folder), dict(np.load(os.path.join(folder, "io.npz")))
        return cache[name]

    return get


@needs_safetensors
@pytest.mark.parametrize("name", ARCHS)
def test_outputs_equal_transformers_with_deviations_undone(converted, name):
    (model, params, state), io = converted(name)
    outputs = _apply(name, model, params, state, io)
    real = io["input_mask"].astype(bool) if name == "mlm" else None
    low, high = HF_DISTANCE[name]
    for key, ours in outputs.items():
        undone, hf = io[f"undone_{key}"], io[f"hf_{key}"]
        assert ours.shape == undone.shape
        assert _relative(ours, undone, real) < 1e-5, key
        assert low <= _relative(ours, hf, real) <= high, (key, _relative(ours, hf, real))


@needs_safetensors
def test_mlm_padded_positions_differ_as_transformers_ignores_the_query_mask(converted):
    (model, params, state), io = converted("mlm")
    logits = _apply("mlm", model, params, state, io)["logits"]
    padded = ~io["input_mask"].astype(bool)
    assert padded.any() and (~padded).any()
    for key in ("undone_logits", "hf_logits"):
        assert np.max(np.abs(logits[padded] - io[key][padded])) > 1.0


@needs_safetensors
def test_batchnorm_statistics_become_a_warm_ema(converted):
    (_, params, state), _ = converted("conv")
    hf = convert.read_weights(os.path.join(DATA, "conv"))
    assert all(v.dtype == np.float32 for m in params.values() for v in m.values())  # From float16.
    bn = "image_preprocessor/~/conv2_d_downsample/~/batchnorm"
    for stat in ("mean", "var"):
        ema = state[f"{bn}/~/{stat}_ema"]
        running = hf[f"perceiver.input_preprocessor.convnet.batchnorm.running_{stat}"]
        np.testing.assert_array_equal(ema["average"], running.reshape(1, 1, 1, -1))
        np.testing.assert_array_equal(ema["hidden"], ema["average"])
        assert int(ema["counter"]) == 4242  # num_batches_tracked, past the warm minimum.


@needs_safetensors
def test_sharded_safetensors(tmp_path):
    from safetensors import numpy as st_numpy

    folder = _copy_with(tmp_path, "mlm")
    (folder / "model.safetensors").unlink()
    tensors = _mlm_tensors()
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        st_numpy.save_file({n: tensors[n] for n in part}, str(folder / shard))
        weight_map.update({n: shard for n in part})
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    _, params, _ = convert.from_hf(folder)
    _, want, _ = convert.from_hf(os.path.join(DATA, "mlm"))
    assert params.keys() == want.keys()
    for module in want:
        for leaf in want[module]:
            np.testing.assert_array_equal(params[module][leaf], want[module][leaf])
    weight_map[names[0]] = "../model.safetensors"
    index.write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="is not a file name in the directory"):
        convert.from_hf(folder)


@needs_safetensors
@pytest.mark.parametrize("name", ["mlm", "conv"])
def test_both_file_formats_give_identical_trees(name):
    folder = os.path.join(DATA, name)
    arch = convert.read_config(folder)["architectures"][0]
    trees = []
    for weights in ("model.safetensors", "pytorch_model.bin"):
        tensors = convert.read_weights(folder, weights)
        trees.append(convert.convert_state_dict(arch, tensors))
    (p1, s1, u1), (p2, s2, u2) = trees
    assert u1 == u2 == []
    for a, b in ((p1, p2), (s1, s2)):
        assert a.keys() == b.keys()
        for module in a:
            assert a[module].keys() == b[module].keys()
            for leaf in a[module]:
                assert a[module][leaf].dtype == b[module][leaf].dtype
                np.testing.assert_array_equal(a[module][leaf], b[module][leaf])


def test_from_hf_reads_pytorch_model_bin_alone(tmp_path):
    folder = tmp_path / "mlm"
    folder.mkdir()
    for f in ("config.json", "pytorch_model.bin"):
        shutil.copy(os.path.join(DATA, "mlm", f), folder / f)
    model, params, state = convert.from_hf(folder)
    io = np.load(os.path.join(DATA, "mlm", "io.npz"))
    logits = _apply("mlm", model, params, state, io)["logits"]
    real = io["input_mask"].astype(bool)
    assert _relative(logits, io["undone_logits"], real) < 1e-5


def test_conv_kernel_layouts():
    kernel = np.random.default_rng(0).normal(size=(7, 7, 3, 64)).astype(np.float32)
    arch = "PerceiverForImageClassificationConvProcessing"
    name = "perceiver.input_preprocessor.convnet.conv.weight"
    module = "image_preprocessor/~/conv2_d_downsample/~/conv"
    # transformers' conversion script stored DeepMind's HWIO kernel as np.transpose(w).
    scripted = {name: np.transpose(kernel)}
    back, _, _ = convert.convert_state_dict(arch, scripted, conv_kernel_layout="oiwh")
    np.testing.assert_array_equal(back[module]["w"], kernel)
    # Read as torch applies it, that kernel has height and width swapped.
    as_torch, _, _ = convert.convert_state_dict(arch, scripted)
    np.testing.assert_array_equal(as_torch[module]["w"], kernel.transpose(1, 0, 2, 3))
    with pytest.raises(ValueError, match="conv_kernel_layout"):
        convert.convert_state_dict(arch, scripted, conv_kernel_layout="hwio")


@needs_safetensors
def test_oiwh_layout_changes_the_conv_model(converted):
    (model, params, state), io = converted("conv")
    _, flipped, _ = convert.from_hf(os.path.join(DATA, "conv"), conv_kernel_layout="oiwh")
    assert (
        _relative(_apply("conv", model, flipped, state, io)["logits"], io["undone_logits"]) > 1e-3
    )


# ---------------------------------------------------------------------------
# Mapping and config checks
# ---------------------------------------------------------------------------


def _mlm_tensors():
    return convert.read_weights(os.path.join(DATA, "mlm"), "pytorch_model.bin")


def _copy_with(tmp_path, name, config=None, tensors=None):
    """A copy of a fixture directory with its config or its (safetensors) weights replaced."""
    folder = tmp_path / name
    shutil.copytree(os.path.join(DATA, name), folder)
    (folder / "pytorch_model.bin").unlink(missing_ok=True)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    if tensors is not None:
        from safetensors import numpy as st_numpy

        st_numpy.save_file(tensors, str(folder / "model.safetensors"))
    return folder


@needs_safetensors
def test_unused_tensor_is_an_error(tmp_path):
    tensors = _mlm_tensors()
    tensors["perceiver.decoder.extra.weight"] = np.zeros((2, 3), np.float32)
    with pytest.raises(CheckpointError, match="have no place") as e:
        convert.from_hf(_copy_with(tmp_path, "mlm", tensors=tensors))
    assert e.value.differences == ["unused perceiver.decoder.extra.weight (found [2, 3])"]


@needs_safetensors
def test_missing_tensor_is_an_error(tmp_path):
    tensors = _mlm_tensors()
    del tensors["perceiver.encoder.self_attends.1.mlp.dense2.bias"]
    with pytest.raises(CheckpointError, match="do not match the model") as e:
        convert.from_hf(_copy_with(tmp_path, "mlm", tensors=tensors))
    assert e.value.differences == [
        "missing perceiver_encoder/~/self_attention_1/mlp/linear_1/b (expected [16] float32)"
    ]


def _config(name):
    return convert.read_config(os.path.join(DATA, name))


@pytest.mark.parametrize(
    "name, field, value",
    [
        ("flow", "hidden_act", "relu"),
        ("mlm", "architectures", ["PerceiverModel"]),
        ("text", "num_cross_attention_heads", 1),
        ("text", "v_channels", 8),
        ("mlm", "qk_channels", None),
        ("mlm", "num_cross_attention_heads", 4),
        ("learned", "cross_attention_widening_factor", 4),
        ("learned", "use_query_residual", False),
        ("fourier", "qk_channels", 32),
        ("video", "image_size", 8),
        ("flow", "num_blocks", 2),
        ("mlm", "vocab_size", 300),
    ],
)
def test_inexpressible_config_is_refused_naming_the_field(name, field, value):
    config = dict(_config(name), **{field: value})
    with pytest.raises(ValueError, match=re.escape(f"config.json field {field}={value!r}")):
        convert.hf_factory(config)


@needs_safetensors
def test_from_hf_refuses_an_unknown_activation(tmp_path):
    folder = _copy_with(tmp_path, "flow", config=dict(_config("flow"), hidden_act="silu"))
    with pytest.raises(ValueError, match="hidden_act='silu'"):
        convert.from_hf(folder)


@pytest.mark.parametrize("name", ARCHS)
def test_fixture_configs_map_to_our_factories(name):
    factory, kwargs = convert.hf_factory(_config(name))
    params, _ = models.parameter_shapes(factory, **kwargs)
    assert params  # The sizes build a model.


# ---------------------------------------------------------------------------
# Hostile pytorch_model.bin files
# ---------------------------------------------------------------------------


def _str(text):
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(n):
    return b"J" + struct.pack("<i", n)


def _ints(values):
    return b"(" + b"".join(_int(v) for v in values) + b"t"


def _global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _tensor(key, numel, offset, size, stride, storage="FloatStorage"):
    """A tensor as torch pickles it: `_rebuild_tensor_v2(storage, offset, size, stride, ...)`."""
    pid = (
        b"("
        + _str("storage")
        + _global("torch", storage)
        + _str(key)
        + _str("cpu")
        + _int(numel)
        + b"tQ"
    )
    hooks = _global("collections", "OrderedDict") + b")R"
    return (
        _global("torch._utils", "_rebuild_tensor_v2")
        + b"("
        + pid
        + _int(offset)
        + _ints(size)
        + _ints(stride)
        + b"\x89"
        + hooks
        + b"tR"
    )


def _state_dict_pickle(entries):
    return b"\x80\x02}(" + b"".join(_str(k) + v for k, v in entries.items()) + b"u."


def _write_bin(path, pickle_bytes, storages, prefix="archive"):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{prefix}/data.pkl", pickle_bytes)
        zf.writestr(f"{prefix}/byteorder", "little")
        for key, data in storages.items():
            zf.writestr(f"{prefix}/data/{key}", data)
    return path


def _declare_size(path, member, size):
    """Rewrites the sizes `member` declares in the zip's headers (a zip-bomb stand-in)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    struct.pack_into("<I", data, info.header_offset + 22, size)  # Local header.
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        n = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + n] == member.encode():
            struct.pack_into("<I", data, at + 24, size)  # Central directory.
        at = data.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(data))


def _good_storage():
    return np.arange(6, dtype="<f4").tobytes()


def test_handmade_bin_reads(tmp_path):
    entries = {
        "a": _tensor("0", 6, 0, (2, 3), (3, 1)),
        "b": _tensor("0", 6, 1, (2, 2), (1, 2)),  # A strided view of the same storage.
        "c": _tensor("1", 1, 0, (), (), storage="LongStorage"),
    }
    storages = {"0": _good_storage(), "1": np.array([7], "<i8").tobytes()}
    tensors = convert.read_torch_bin(
        _write_bin(tmp_path / "ok.bin", _state_dict_pickle(entries), storages)
    )
    np.testing.assert_array_equal(tensors["a"], np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(tensors["b"], [[1, 3], [2, 4]])
    assert tensors["c"].dtype == np.int64 and tensors["c"].shape == () and tensors["c"] == 7
    assert tensors["a"].flags.owndata and tensors["b"].flags.owndata


# os.system("echo pwned"), as a pickle of a __reduce__ object writes it.
_OS_SYSTEM = _global("os", "system") + b"(" + _str("echo pwned") + b"tR"


def _hostile_cases(tmp_path):
    good = {"0": _good_storage()}
    cases = {
        "os_system": (
            _state_dict_pickle({"x": _OS_SYSTEM}),
            good,
            "os.system, which is not allowed",
        ),
        "missing_member": (
            _state_dict_pickle({"x": _tensor("7", 6, 0, (6,), (1,))}),
            good,
            "no member 'archive/data/7'",
        ),
        "stride_past_storage": (
            _state_dict_pickle({"x": _tensor("0", 6, 0, (2, 3), (4, 1))}),
            good,
            "reaches element 6 of a storage of 6",
        ),
        "offset_past_storage": (
            _state_dict_pickle({"x": _tensor("0", 6, 5, (2,), (1,))}),
            good,
            "reaches element 6 of a storage of 6",
        ),
        "numel_disagrees": (
            _state_dict_pickle({"x": _tensor("0", 600, 0, (6,), (1,))}),
            good,
            "declares 24 bytes; expected 2400",
        ),
        "path_in_key": (
            _state_dict_pickle({"x": _tensor("../0", 6, 0, (6,), (1,))}),
            good,
            "storage key is '../0'",
        ),
        "unknown_storage_class": (
            _state_dict_pickle({"x": _tensor("0", 6, 0, (6,), (1,), "Storage")}),
            good,
            "torch.Storage, which is not allowed",
        ),
    }
    for name, (pkl, storages, message) in cases.items():
        yield name, _write_bin(tmp_path / f"{name}.bin", pkl, storages), message
    huge = _write_bin(tmp_path / "huge_pickle.bin", _state_dict_pickle({}), {})
    _declare_size(huge, "archive/data.pkl", 0xFFFFFFF0)
    yield "huge_pickle", huge, "declares 4294967280 bytes; at most"
    entries = {"x": _tensor("0", 6, 0, (6,), (1,))}
    huge = _write_bin(tmp_path / "huge_storage.bin", _state_dict_pickle(entries), good)
    _declare_size(huge, "archive/data/0", 0xFFFFFFF0)
    yield "huge_storage", huge, "declares 4294967280 bytes; expected 24"
    not_zip = tmp_path / "not_zip.bin"
    not_zip.write_bytes(pickle.dumps({"x": 1}))
    yield "not_zip", not_zip, "not a zip archive"
    no_pickle = tmp_path / "no_pickle.bin"
    with zipfile.ZipFile(no_pickle, "w") as zf:
        zf.writestr("archive/other", b"")
    yield "no_pickle", no_pickle, "found 0"


def test_hostile_bins_are_refused(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a))
    seen = set()
    for name, path, message in _hostile_cases(tmp_path):
        with pytest.raises(CheckpointError) as e:
            convert.read_torch_bin(path)
        text = str(e.value)
        assert text.startswith(str(path)), (name, text)  # Names the file.
        assert message in text, (name, text)
        assert len(text) < 400, name
        seen.add(name)
    assert len(seen) == 11
    assert calls == []  # Nothing from the files ran.


def test_plain_torch_save_of_a_state_dict_reads_without_its_metadata():
    # torch.save(module.state_dict()): the OrderedDict gets `_metadata` by a BUILD.
    path = os.path.join(DATA, "torch_state_dict.bin")
    with zipfile.ZipFile(path) as zf:
        pickled = zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))
    assert b"_metadata" in pickled and pickled.rstrip(b".").endswith(b"b")  # Ends in BUILD.
    tensors = convert.read_torch_bin(path)
    assert sorted(tensors) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    np.testing.assert_array_equal(tensors["0.weight"], np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(tensors["1.bias"], [30, 31])


_ORDERED_DICT = _global("collections", "OrderedDict") + b")R"
_METADATA = (
    b"}"
    + _str("_metadata")
    + _ORDERED_DICT
    + b"("
    + _str("")
    + b"}"
    + _str("version")
    + _int(1)
    + b"su"
    + b"s"
)


def _state_dict_with_build(build_state, entries=None, target=_ORDERED_DICT):
    """A state dict pickled as torch does: OrderedDict(), its items, then BUILD(build_state)."""
    entries = {"x": _tensor("0", 6, 0, (6,), (1,))} if entries is None else entries
    items = b"(" + b"".join(_str(k) + v for k, v in entries.items()) + b"u"
    return b"\x80\x02" + target + items + build_state + b"b."


def test_handmade_state_dict_with_metadata_reads(tmp_path):
    path = _write_bin(
        tmp_path / "ok.bin", _state_dict_with_build(_METADATA), {"0": _good_storage()}
    )
    tensors = convert.read_torch_bin(path)
    assert list(tensors) == ["x"] and type(tensors) is dict  # `_metadata` kept out of the tensors.
    np.testing.assert_array_equal(tensors["x"], np.arange(6))


@pytest.mark.parametrize(
    "build_state, target, message",
    [
        # Another attribute besides _metadata.
        (
            b"}" + _str("_metadata") + b"}s" + _str("evil") + _int(1) + b"s",
            _ORDERED_DICT,
            "sets attribute 'evil'",
        ),
        # (state, slotstate), as pickle writes for __slots__.
        (b"}" + b"}" + b"\x86", _ORDERED_DICT, "from a tuple; only a dict"),
        (_str("_metadata"), _ORDERED_DICT, "from '_metadata'; only a dict"),
        # Two BUILDs on one mapping.
        (_METADATA + b"b" + _METADATA, _ORDERED_DICT, "sets the attributes of a mapping twice"),
        # A plain dict (EMPTY_DICT) takes no BUILD at all.
        (_METADATA, b"}", "tries to set the state of a dict"),
    ],
    ids=["other_attribute", "slot_state", "str_state", "two_builds", "plain_dict"],
)
def test_bin_builds_other_than_one_metadata_are_refused(tmp_path, build_state, target, message):
    pickled = _state_dict_with_build(build_state, target=target)
    path = _write_bin(tmp_path / "bad.bin", pickled, {"0": _good_storage()})
    with pytest.raises(CheckpointError, match=re.escape(message)) as e:
        convert.read_torch_bin(path)
    assert str(e.value).startswith(str(path))


def test_from_hf_refuses_a_hostile_bin(tmp_path):
    folder = _copy_with(tmp_path, "mlm")
    (folder / "model.safetensors").unlink()
    _write_bin(folder / "pytorch_model.bin", _state_dict_pickle({"x": _OS_SYSTEM}), {})
    with pytest.raises(CheckpointError, match="pytorch_model.bin: .*not allowed"):
        convert.from_hf(folder)


def _damaged_archives(tmp_path):
    """`(name, path)` of torch archives broken in their zip structure, not their pickle."""
    good = _write_bin(
        tmp_path / "good.bin",
        _state_dict_pickle({"x": _tensor("0", 6, 0, (6,), (1,))}),
        {"0": _good_storage()},
    )
    data = good.read_bytes()
    end = data.rfind(b"PK\x05\x06")  # The end-of-archive record.
    for name, at, value in (
        ("directory_offset_past_the_file", end + 16, 0xFFFFFF00),
        ("directory_size_past_the_file", end + 12, 0xFFFFFF00),
    ):
        broken = bytearray(data)
        struct.pack_into("<I", broken, at, value)
        (tmp_path / f"{name}.bin").write_bytes(bytes(broken))
        yield name, tmp_path / f"{name}.bin"
    # torch writes zip64 records; a locator claiming several disks makes
    # zipfile.is_zipfile itself raise BadZipFile.
    torch_bin = bytearray(open(os.path.join(DATA, "torch_state_dict.bin"), "rb").read())
    struct.pack_into("<I", torch_bin, torch_bin.rfind(b"PK\x06\x07") + 16, 2)
    (tmp_path / "zip64_disks.bin").write_bytes(bytes(torch_bin))
    yield "zip64_disks", tmp_path / "zip64_disks.bin"
    # A deflated data.pkl whose compressed bytes are garbled: zlib.error.
    deflated = tmp_path / "deflated.bin"
    with zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", _state_dict_pickle({"x": _tensor("0", 6, 0, (6,), (1,))}))
        zf.writestr("archive/data/0", _good_storage())
    with zipfile.ZipFile(deflated) as zf:
        info = zf.getinfo("archive/data.pkl")
    broken = bytearray(deflated.read_bytes())
    start = info.header_offset + 30 + len(info.filename)
    broken[start : start + 8] = bytes(b ^ 0xFF for b in broken[start : start + 8])
    deflated.write_bytes(bytes(broken))
    yield "garbled_deflate", deflated
    # A member name flagged UTF-8 that is not: UnicodeDecodeError.
    named = tmp_path / "name.bin"
    with zipfile.ZipFile(named, "w") as zf:
        zf.writestr("archive/data.pkl", _state_dict_pickle({}))
        zf.writestr("archive/\u00e9", b"")
    raw = named.read_bytes()
    directory = raw.find(b"PK\x01\x02")
    named.write_bytes(raw[:directory] + raw[directory:].replace("\u00e9".encode(), b"\xff\xfe"))
    yield "name_not_utf8", named
    cut = tmp_path / "cut.bin"
    cut.write_bytes(data[: len(data) // 2] + data[-22:])  # The middle lost, the end kept.
    yield "cut_short", cut
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    yield "empty", empty


def test_damaged_archives_are_refused_on_one_line(tmp_path):
    seen = []
    for name, path in _damaged_archives(tmp_path):
        with pytest.raises(CheckpointError) as e:
            convert.read_torch_bin(path)
        text = str(e.value)
        assert text.startswith(str(path)), (name, text)
        assert "\n" not in text and len(text) < 2000, name
        seen.append(name)
    assert len(seen) == 7


def test_damaged_safetensors_and_configs_are_refused(tmp_path):
    pytest.importorskip("safetensors")
    data = open(os.path.join(DATA, "mlm", "model.safetensors"), "rb").read()
    header = int.from_bytes(data[:8], "little")
    broken = {
        "header_length_past_the_file": (2**63).to_bytes(8, "little") + data[8:],
        "header_not_json": data[:8] + b"\xff" * header + data[8 + header :],
        "cut_short": data[: len(data) // 2],
        "header_a_list": b"\x02" + b"\x00" * 7 + b"[]",
    }
    for name, content in broken.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        with pytest.raises(CheckpointError) as e:
            convert.read_safetensors(path)
        assert str(e.value).startswith(str(path)) and "\n" not in str(e.value), name
    for name, content in {
        "not_utf8": b"\xff\xfe",
        "nested_too_deep": b"[" * 100_000 + b"]" * 100_000,
        "huge_int": b'{"d_model": ' + b"9" * 5000 + b"}",
        "a_list": b"[]",
    }.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_bytes(content)
        with pytest.raises(CheckpointError, match="config.json: ") as e:
            convert.read_config(folder)
        assert len(str(e.value)) < 2000, name
    (tmp_path / "folder" / "config.json").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="cannot be read"):
        convert.read_config(tmp_path / "folder")


def test_missing_weights_and_config(tmp_path):
    with pytest.raises(FileNotFoundError):
        convert.from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(_config("mlm")))
    with pytest.raises(FileNotFoundError, match="holds none of"):
        convert.from_hf(tmp_path)


# ---------------------------------------------------------------------------
# Against transformers itself (needs torch and transformers)
# ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ARCHS)
def test_fresh_transformers_model(tmp_path, name):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import make_hf_fixtures

    make_hf_fixtures.make(name, str(tmp_path), seed=100 + ARCHS.index(name))
    folder = tmp_path / name
    io = dict(np.load(folder / "io.npz"))
    for weights in convert.WEIGHTS_NAMES:
        if not (folder / weights).exists():
            continue
        model, params, state = convert.from_hf(folder, weights_name=weights)
        real = io["input_mask"].astype(bool) if name == "mlm" else None
        for key, ours in _apply(name, model, params, state, io).items():
            assert _relative(ours, io[f"undone_{key}"], real) < 1e-5, (weights, key)
