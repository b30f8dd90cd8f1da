"""The byte language model's whole path: train (stdlib text) -> export -> TextGenerator and `perceiver generate`."""

import json
import math
import os
import sysconfig
import warnings

import numpy as np
import pytest

pytest.importorskip("grain")
pytest.importorskip("orbax.checkpoint")

from perceiver import checkpoint, cli, language_model  # noqa: E402
from perceiver.tasks import generation  # noqa: E402
from perceiver.train import main as train_main  # noqa: E402
from perceiver.train import metrics  # noqa: E402
from perceiver.train import text_data as text_lib  # noqa: E402

# Small enough to train in seconds; 8 latents, so the sampler refills every 4 bytes.
MICRO = [
    "model.max_context_length=64", "model.num_latents=8", "model.num_channels=32", "model.num_layers=1",
    "data.seq_len=64", "train.num_steps=60", "train.progress=false", "train.log_every=100",
    "checkpoint.every_steps=1000", "optimizer.warmup_steps=5",
]
EVAL_MODULE = "bisect.py"  # small: every byte is scored, 8 at a time


def exported(tmp_path_factory):
    """A micro byte LM trained with the tiny recipe on standard-library source, exported."""
    workdir = tmp_path_factory.mktemp("lm")
    path = str(workdir / "lm.pystate")
    eval_path = os.path.join(sysconfig.get_paths()["stdlib"], EVAL_MODULE)
    overrides = MICRO + [f"data.eval_paths={eval_path}"]
    assert train_main.main(["--config", "perceiver_ar", "--tiny", "--workdir", str(workdir)] + overrides) == 0
    assert train_main.main(["--workdir", str(workdir), "--export", path]) == 0
    return workdir, path


def _training_learns_and_evaluates_every_held_out_byte_once(exported):
    workdir, _ = exported
    records = metrics.read(os.path.join(workdir, "metrics.jsonl"))
    train = [r["loss"] for r in records if r["split"] == "train"]
    assert np.mean(train[-10:]) < 0.8 * np.mean(train[:10])
    final = [r for r in records if r["split"] == "eval"][-1]
    # Every token of the module's document but its first (SOS) is predicted once.
    stdlib = sysconfig.get_paths()["stdlib"]
    with open(os.path.join(stdlib, EVAL_MODULE), encoding="utf-8", errors="replace") as f:
        size = len(f.read().encode("utf-8"))
    assert final["predicted_tokens"] == size + 1  # its bytes and EOS
    assert final["bits_per_byte"] == pytest.approx(final["loss"] / math.log(2), rel=1e-6)
    assert final["bits_per_byte"] < 8  # better than knowing nothing of text


def test_byte_windows_score_each_token_once_with_all_the_context_that_fits(tmp_path):
    (tmp_path / "a.txt").write_text("abcdefghij")
    (tmp_path / "b.txt").write_text("xyz")
    windows = text_lib.ByteWindows([str(tmp_path)], seq_len=6, predicted=2)
    corpus = np.concatenate([language_model.encode("abcdefghij"), [language_model.EOS],
                             language_model.encode("xyz"), [language_model.EOS]])
    scored = []
    for i in range(len(windows)):
        record = windows[i]
        n = int((record["inputs"] > 0).sum())
        shifted = record["targets"][: n - 1]
        np.testing.assert_array_equal(shifted[shifted > 0], record["inputs"][1:n][shifted > 0])
        last = record["targets"][max(0, n - 2): n]  # the last 2 real positions predict these
        scored += list(last[last > 0])
        if i >= 3:
            assert n == 6  # a full window once the corpus allows it
    np.testing.assert_array_equal(scored, corpus[1:])


def _the_export_is_described_and_generates_the_same_with_and_without_the_cache(exported):
    _, path = exported
    with open(checkpoint.description_path(path)) as f:
        description = json.load(f)
    assert description["factory"] == "byte_language_model"
    assert description["tokenizer"]["reserved"] == language_model.NUM_RESERVED
    generator = generation.TextGenerator.from_pretrained(path)
    prompts = ["def main(", "import os"]  # one batch: equal lengths
    kwargs = dict(max_new_bytes=4, temperature=0)
    cached = generator.generate(prompts, **kwargs)
    plain = generator.generate(prompts, use_cache=False, **kwargs)
    assert cached == plain and all(isinstance(t, str) for t in cached)
    sampling = dict(max_new_bytes=5, temperature=0.9, top_k=20, top_p=0.9, seed=4)
    assert generator.generate(prompts, **sampling) == generator.generate(prompts, **sampling)


def _past_the_context_the_window_slides_and_says_so_once(exported):
    _, path = exported
    generator = generation.TextGenerator.from_pretrained(path)
    prompt = "for i in range(10):\n    print(i)\n" * 3  # 99 bytes, the context is 64
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        text = generator.generate(prompt, max_new_bytes=12, temperature=0)
    assert [w.category for w in caught] == [generation.ContextWarning]
    assert "slides" in str(caught[0].message)
    assert len(text.encode("utf-8", errors="replace")) <= 12 * 3


def _cli_streams_the_continuation_and_its_speed(exported, capsys):
    _, path = exported
    generator = generation.TextGenerator.from_pretrained(path)
    want = generator.generate("import ", max_new_bytes=8, temperature=0)
    capsys.readouterr()  # what training printed
    assert cli.main(["generate", "import ", "--checkpoint", path, "--max-new-bytes", "8",
                     "--temperature", "0"]) == 0
    out, err = capsys.readouterr()
    assert out == want + "\n"
    assert "bytes/s" in err


@pytest.mark.parametrize("args, words", [
    (["--max-new-bytes", "0"], "--max-new-bytes must be >= 1"),
    (["--temperature", "nan"], "--temperature must be a finite number"),
    (["--temperature", "-0.5"], "--temperature must be a finite number"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-p", "1.01"], "--top-p must be in (0, 1]"),
    (["--top-k", "-1"], "--top-k must be >= 0"),
])
def test_cli_bad_options_are_one_line_before_loading(args, words, capsys, tmp_path):
    missing = str(tmp_path / "nothing.pystate")  # never read: options fail first
    assert cli.main(["generate", "x", "--checkpoint", missing] + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]


def _bad_prompts_and_checkpoints_are_named(exported, tmp_path, capsys):
    workdir, path = exported
    assert cli.main(["generate", "", "--checkpoint", path]) == 2
    assert "prompt is empty" in capsys.readouterr().err
    generator = generation.TextGenerator.from_pretrained(path)
    with pytest.raises(ValueError, match="empty"):
        generator.generate("", max_new_bytes=3)
    with pytest.raises(ValueError, match=r"prompts\[1\] is empty"):
        generator.generate(["a", ""], max_new_bytes=3)
    with pytest.raises(TypeError, match="str"):
        generator.generate(b"bytes", max_new_bytes=3)
    with pytest.raises(ValueError, match="published"):
        generation.TextGenerator.from_pretrained("mlm")
    # A checkpoint of another kind: its description names the task that runs it.
    other = tmp_path / "other.pystate"
    other.write_bytes(open(path, "rb").read())
    with open(checkpoint.description_path(path)) as f:
        description = json.load(f)
    description["factory"] = "text_classifier"
    (tmp_path / "other.json").write_text(json.dumps(description))
    assert cli.main(["generate", "x", "--checkpoint", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "text_classifier" in err[0] and "perceiver classify-text" in err[0]


def test_utf8_stream_holds_back_split_characters():
    written = []
    stream = generation.Utf8Stream(written.append)
    for byte in "né😀".encode("utf-8"):
        stream.write(bytes([byte]))
    stream.write(b"\xff")
    stream.write(b"\xe2\x82")  # an unfinished character at the end
    stream.close()
    assert "".join(written) == "né😀\ufffd\ufffd"


def test_the_trained_models_whole_path(tmp_path_factory, tmp_path, capsys):
    # One test, so that the model is trained once (xdist spreads a module's tests).
    run = exported(tmp_path_factory)
    _training_learns_and_evaluates_every_held_out_byte_once(run)
    _the_export_is_described_and_generates_the_same_with_and_without_the_cache(run)
    _past_the_context_the_window_slides_and_says_so_once(run)
    _cli_streams_the_continuation_and_its_speed(run, capsys)
    _bad_prompts_and_checkpoints_are_named(run, tmp_path, capsys)
