"""The token-classification head: train --tiny -> export -> TokenClassifier.tag and `perceiver tag`.

One tiny run (a few steps, stdlib source tagged by tokenize, the stand-in
pretrained MLM) is shared by the tests; what it learns does not matter here.
"""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from perceiver import checkpoint, cli
from perceiver.datasets import token_spans
from perceiver.evaluation.entities import entity_scores
from perceiver.tasks.token_classification import TokenClassifier

pytest.importorskip("grain")
main = pytest.importorskip("perceiver.train.main")

FAST = [
    "train.num_steps=3", "model.num_self_attends=1", "train.progress=false", "checkpoint.every_steps=1000",
    "optimizer.warmup_steps=1", "train.log_every=100", "train.eval_batch_size=64",
]
# Own data (no --tiny generation), no pretrained encoder.
FROM_SCRATCH = ["data.generate=false", "task.pretrained=none", "train.num_steps=1", "optimizer.warmup_steps=1"]
SOURCE = 'def area(r):\n    """Circle."""\n    return 3.14 * r ** 2  # pi r squared\n' * 3


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    """`perceiver train --config finetune_tokens --tiny`: (its export WORKDIR/model.pystate, WORKDIR)."""
    workdir = str(tmp_path_factory.mktemp("tokens") / "run")
    assert cli.main(["train", "--config", "finetune_tokens", "--workdir", workdir, "--tiny"] + FAST) == 0
    return f"{workdir}/model.pystate", workdir


def test_training_reports_byte_and_entity_scores_and_the_export_names_its_tags(tagger):
    path, workdir = tagger
    with open(f"{workdir}/summary.json") as f:
        evaluation = json.load(f)["eval"]
    for name in ("loss", "byte_acc", "entity_precision", "entity_recall", "entity_f1"):
        assert np.isfinite(evaluation[name]), name
    assert evaluation["true_entities"] > 0 and evaluation["eval_bytes"] > 0
    description = checkpoint.read_description(path)
    assert description["factory"] == "token_classifier"
    labels = ["COMMENT", "KEYWORD", "NAME", "NUMBER", "STRING"]
    assert description["labels"] == token_spans.bio_tags(labels)
    assert description["sizes"]["num_labels"] == 11 and description["task"] == {"seq_len": 64, "stride": 32}


def test_tag_reads_long_texts_in_windows_and_returns_character_spans(tagger):
    model = TokenClassifier.from_pretrained(tagger[0])
    assert model.labels == ("COMMENT", "KEYWORD", "NAME", "NUMBER", "STRING") and model.seq_len == 64
    text = "é " + SOURCE  # longer than one window, a two-byte character first
    assert len(text.encode()) > 2 * model.seq_len
    long, short, empty = model.tag([text, "x = 1", ""])
    assert empty == []
    for spans, source in ((long, text), (short, "x = 1")):
        for start, end, label, score in spans:
            assert 0 <= start < end <= len(source) and label in model.labels and 0 < score <= 1
        assert spans == sorted(spans)
    assert model.tag("x = 1") == [short]
    # Each text alone gives what it gives in a batch.
    (alone,) = model.tag(text)
    assert [s[:3] for s in alone] == [s[:3] for s in long]
    np.testing.assert_allclose([s[3] for s in alone], [s[3] for s in long], rtol=1e-5)
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        model.tag(["a", b"b"])


def test_perceiver_tag_prints_and_writes_what_tag_returns(tagger, tmp_path, capsys):
    out = tmp_path / "spans.json"
    assert cli.main(["tag", SOURCE, "x = 1", "--checkpoint", tagger[0], "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    written = json.loads(out.read_text())
    expected = TokenClassifier.from_pretrained(tagger[0]).tag([SOURCE, "x = 1"])
    assert [r["text"] for r in written] == [SOURCE, "x = 1"]
    for record, spans in zip(written, expected):
        got = [(s["start"], s["end"], s["label"], s["score"]) for s in record["spans"]]
        assert [g[:3] for g in got] == [e[:3] for e in spans]
        np.testing.assert_allclose([g[3] for g in got], [e[3] for e in spans], rtol=1e-5)
        assert all(s["text"] == record["text"][s["start"]:s["end"]] for s in record["spans"])
    assert "x = 1" in printed


def test_a_checkpoint_of_another_kind_is_refused(tagger, tmp_path, run_cli):
    other = tmp_path / "mlm.pystate"
    shutil.copy(tagger[0], other)
    description = {k: v for k, v in checkpoint.read_description(tagger[0]).items() if k != "labels"}
    checkpoint.save_description(other, dict(description, factory="masked_language_model"))
    with pytest.raises(checkpoint.CheckpointError, match="describes a 'masked_language_model' model"):
        TokenClassifier.from_pretrained(str(other))
    status, out, err = run_cli("tag", "x", "--checkpoint", str(other))
    assert status == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "perceiver fill-mask" in err
    status, _, err = run_cli("tag", "x", "--checkpoint", "mlm")
    assert status == 2 and "not a token classifier" in err and len(err.strip().splitlines()) == 1


def test_bad_span_files_stop_training_with_one_line_naming_file_and_line(tmp_path, capsys):
    good = {"text": "abc def", "spans": [[0, 3, "X"]]}
    cases = [
        ([good, {"text": "abc", "spans": [[1, 9, "X"]]}], "train.jsonl:2: span [1, 9, 'X'] is outside the text"),
        ([good, {"text": "abcd", "spans": [[0, 3, "X"], [2, 4, "Y"]]}], "train.jsonl:2: spans [0, 3, 'X'] and"),
        ([good, "{not json"], "train.jsonl:2: not JSON"),
    ]
    for records, message in cases:
        path = tmp_path / "train.jsonl"
        path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
        status = cli.main(["train", "--config", "finetune_tokens", "--tiny", "--workdir", str(tmp_path / "w"),
                           f"data.train_paths=('{path}',)"] + FROM_SCRATCH)
        err = capsys.readouterr().err
        assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err
    # Labels the training file lacks, in the evaluation file.
    (tmp_path / "train.jsonl").write_text(json.dumps(good) + "\n")
    (tmp_path / "eval.jsonl").write_text(json.dumps({"text": "ab", "spans": [[0, 1, "Z"]]}) + "\n")
    status = cli.main(["train", "--config", "finetune_tokens", "--tiny", "--workdir", str(tmp_path / "w"),
                       f"data.train_paths=('{tmp_path / 'train.jsonl'}',)",
                       f"data.eval_paths=('{tmp_path / 'eval.jsonl'}',)"] + FROM_SCRATCH)
    err = capsys.readouterr().err
    assert status == 2 and "eval.jsonl: example 1 has label 'Z'" in err, err


def test_entity_counts_on_the_device_are_seqeval_entity_scores():
    from perceiver.train.objectives.token_classification import entity_counts

    tags = token_spans.bio_tags(["A", "B"])
    rng = np.random.default_rng(0)
    true = rng.integers(0, len(tags), (6, 40))
    pred = np.where(rng.random((6, 40)) < 0.8, true, rng.integers(0, len(tags), (6, 40)))
    mask = np.arange(40)[None] < rng.integers(1, 41, (6, 1))
    text = "x" * 40
    spans = lambda row, m: token_spans.decode(text, np.log(np.eye(len(tags))[row[:m]] + 1e-9), tags)
    lengths = mask.sum(1)
    scores = entity_scores([spans(t, n) for t, n in zip(true, lengths)],
                           [spans(p, n) for p, n in zip(pred, lengths)])
    hits, predicted, actual = (float(x) for x in entity_counts(jnp.asarray(pred), jnp.asarray(true),
                                                                jnp.asarray(mask)))
    assert actual == sum(len(spans(t, n)) for t, n in zip(true, lengths))
    assert hits / predicted == pytest.approx(scores["precision"])
    assert hits / actual == pytest.approx(scores["recall"])
