"""The audio-classification head: train --tiny -> export -> AudioClassifier.classify and `perceiver classify-audio`.

One tiny run (a few steps on espeak-ng's spoken words, voices held out for
evaluation) is shared by the tests; what it learns does not matter here.
Tests that need espeak-ng are skipped without it.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from perceiver import checkpoint, cli, media
from perceiver.datasets import spoken_words
from perceiver.tasks.audio_classification import AudioClassifier

pytest.importorskip("grain")
main = pytest.importorskip("perceiver.train.main")

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
FAST = [
    "train.num_steps=4", "model.num_self_attends_per_block=1", "train.progress=false",
    "checkpoint.every_steps=1000", "optimizer.warmup_steps=1", "train.log_every=100",
]
WORDS = ["down", "no", "up", "yes"]
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`perceiver train --config finetune_audio --tiny`, and the model it exported: (file, workdir)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng")
    workdir = str(tmp_path_factory.mktemp("audio") / "run")
    # A process of its own, to compile under XLA's fast flags (a third less time).
    env = dict(os.environ, XLA_FLAGS=FAST_COMPILE)
    command = [sys.executable, "-m", "perceiver.cli", "train", "--config", "finetune_audio", "--workdir", workdir,
               "--tiny"] + FAST
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return f"{workdir}/model.pystate", workdir


@pytest.fixture(scope="module")
def classifier(trained):
    """The exported model, loaded once (each instance compiles its own)."""
    return AudioClassifier.from_pretrained(trained[0])


def _eval_clips(workdir):
    root = f"{workdir}/generated/spoken_words_8000/eval"
    return [f"{root}/{word}/{speaker.name}.wav" for word in WORDS for speaker in spoken_words.SPEAKERS[16:18]]


@needs_espeak
def test_the_export_describes_the_model_and_how_clips_are_read(trained):
    path, workdir = trained
    with open(f"{workdir}/summary.json") as f:
        evaluation = json.load(f)["eval"]
    assert evaluation["examples"] == 8 and 0 <= evaluation["top_1_acc"] <= 1
    description = checkpoint.read_description(path)
    assert description["factory"] == "audio_classifier" and description["labels"] == WORDS
    assert description["task"] == {"sample_rate": 8000, "num_samples": 8000, "normalize": True}


@needs_espeak
def test_classify_takes_files_and_waveforms_at_any_rate(trained, classifier):
    model, workdir = classifier, trained[1]
    assert model.class_names == tuple(WORDS) and model.sample_rate == 8000
    clips = _eval_clips(workdir)
    results = model.classify(clips, top_k=2)
    assert len(results) == len(clips)
    for labels in results:
        assert len(labels) == 2 and {name for name, _ in labels} <= set(WORDS)
        assert labels[0][1] >= labels[1][1] and sum(p for _, p in labels) <= 1 + 1e-5
    # A waveform at 16 kHz is resampled to the model's rate: as its file at 8 kHz, nearly.
    wave, rate = media.read_wav(clips[0])
    from perceiver.datasets import audio_folders

    at_16k = audio_folders.resample(wave[:, 0], rate, 16000)
    probs = model.probabilities([at_16k], sample_rate=16000)
    np.testing.assert_allclose(probs, model.probabilities(clips[0]), atol=0.02)
    # One clip alone gives what it gives in a batch; top_k beyond the classes gives them all.
    alone, batched = model.classify(clips[0], top_k=9)[0], model.classify(clips, top_k=4)[0]
    assert [n for n, _ in alone] == [n for n, _ in batched]
    np.testing.assert_allclose([p for _, p in alone], [p for _, p in batched], atol=1e-5)
    with pytest.raises(ValueError, match=r"clips\[0\]: the audio is silent"):
        model.classify([np.zeros(100)])


@needs_espeak
def test_perceiver_classify_audio_prints_and_writes_what_classify_returns(trained, classifier, tmp_path, run_cli):
    path, workdir = trained
    clips = _eval_clips(workdir)[:3]
    out = tmp_path / "labels.json"
    code, printed, _ = run_cli("classify-audio", *clips, "--checkpoint", path, "--top-k", 3, "--json", out)
    assert code == 0
    expected = classifier.classify(clips, top_k=3)
    written = json.loads(out.read_text())
    assert [r["clip"] for r in written] == clips
    for record, labels in zip(written, expected):
        assert [(n, pytest.approx(p, abs=1e-6)) for n, p in record["labels"]] == labels
    assert printed.splitlines()[0] == clips[0] and len(printed.splitlines()) == 3 * 4


@needs_espeak
def test_silent_unreadable_and_other_kinds_are_one_line_and_exit_2(trained, tmp_path, run_cli):
    path, _ = trained
    silent = tmp_path / "silent.wav"
    media.write_wav(silent, np.zeros(4000), 8000)
    text = tmp_path / "notes.txt"
    text.write_text("not audio")
    fake = tmp_path / "fake.wav"
    fake.write_text("not audio either")
    other = tmp_path / "other.pystate"
    shutil.copy(path, other)
    description = checkpoint.read_description(path)
    (tmp_path / "other.json").write_text(json.dumps(dict(description, factory="text_classifier")))
    cases = [
        ([silent, "--checkpoint", path], f"{silent}: the audio is silent"),
        ([text, "--checkpoint", path], f"{text}: unsupported audio extension '.txt'"),
        ([fake, "--checkpoint", path], f"{fake}: cannot read it as audio"),
        ([silent, "--checkpoint", other], "describes a 'text_classifier' model; this task runs 'audio_classifier'"),
        ([silent, "--checkpoint", "flow_small"], "'flow_small' is a checkpoint of optical_flow, not of audio_classifier"),
        ([silent], "classify-audio needs --checkpoint FILE"),
    ]
    for args, message in cases:
        code, out, err = run_cli("classify-audio", *args)
        assert code == 2 and out == "", args
        assert len(err.strip().splitlines()) == 1 and message in err, err
    with pytest.raises(checkpoint.CheckpointError, match="describes a 'text_classifier' model"):
        AudioClassifier.from_pretrained(str(other))


def test_tiny_without_espeak_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(spoken_words.shutil, "which", lambda name: None)
    assert main.main(["--config", "finetune_audio", "--workdir", str(tmp_path / "w"), "--tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "apt-get install espeak-ng" in err and "data.train_dir=PATH" in err, err


def test_training_refuses_a_pretrained_checkpoint_of_another_model(tmp_path, capsys):
    args = ["--config", "finetune_audio", "--workdir", str(tmp_path / "w"), "--tiny", "task.pretrained=flow_small"]
    assert main.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'flow_small' is a checkpoint of optical_flow" in err, err


@pytest.mark.slow
@needs_espeak
def test_export_then_training_continues_from_it(trained, tmp_path):
    path = str(tmp_path / "classifier.pystate")
    assert cli.main(["train", "--workdir", trained[1], "--export", path]) == 0
    assert checkpoint.read_description(path)["labels"] == WORDS
    workdir = str(tmp_path / "again")
    assert main.main(["--config", "finetune_audio", "--workdir", workdir, "--tiny", f"task.pretrained={path}"]
                     + FAST) == 0
    assert AudioClassifier.from_pretrained(f"{workdir}/model.pystate").class_names == tuple(WORDS)
