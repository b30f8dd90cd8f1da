"""perceiver.tasks.text on the small masked language model (max_seq_len=48).

Expected predictions come from the model's own apply, one string at a time
padded to max_seq_len as DeepMind's notebook did, with argmax and softmax in
numpy.
"""

import jax
import numpy as np
import pytest

import reference_fixtures as ref
from perceiver import bytes_tokenizer, checkpoint, models
from perceiver.tasks import text as text_task

FACTORY, SIZES = ref.SMALL_FACTORIES["mlm"]
MAX_LEN = SIZES["max_seq_len"]
TOKENIZER = bytes_tokenizer.BytesTokenizer()


@pytest.fixture(scope="module")
def weights():
    return checkpoint.load(ref.checkpoint_path("mlm"))


@pytest.fixture(scope="module")
def mlm(weights):
    return text_task.MaskedLanguageModel(*weights, **SIZES)


@pytest.fixture(scope="module")
def expected_fill(weights):
    """Independent fill, as DeepMind's notebook: tokens padded to max_seq_len."""
    apply = jax.jit(models.masked_language_model(**SIZES).apply)

    def run(text, spans):
        data = bytearray(text.encode("utf-8"))
        tokens = TOKENIZER.to_int(bytes(data))
        byte_spans = [(len(text[:s].encode()), len(text[:e].encode())) for s, e in spans]
        for start, end in byte_spans:
            tokens[start:end] = TOKENIZER.mask_token
        padded = np.full((1, MAX_LEN), TOKENIZER.pad_token, np.int32)
        padded[0, : len(tokens)] = tokens
        mask = (np.arange(MAX_LEN) < len(tokens)).astype(np.int32)[None]
        logits, _ = apply(*weights, None, padded, mask)
        logits = np.asarray(logits[0, : len(tokens)], np.float64)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        best = logits[:, 6:].argmax(-1)  # Byte b is token b + 6.
        for start, end in byte_spans:
            data[start:end] = bytes(best[start:end].astype(np.uint8))
        chosen = probs[np.arange(len(tokens)), best + 6]
        return bytes(data), [(best[s:e], chosen[s:e]) for s, e in byte_spans]

    return run


def check_against_expected(result, text, spans, expected_fill):
    data, per_span = expected_fill(text, spans)
    assert result.input == text
    assert result.text == data.decode("utf-8", errors="replace")
    assert len(result.spans) == len(spans)
    for filled, (start, end), (best, chosen) in zip(result.spans, spans, per_span):
        assert (filled.start, filled.end) == (start, end)
        assert filled.byte_start == len(text[:start].encode())
        assert filled.byte_end == len(text[:end].encode())
        assert filled.predicted == bytes(best.astype(np.uint8))
        assert filled.text == filled.predicted.decode("utf-8", errors="replace")
        np.testing.assert_allclose(filled.probabilities, chosen, rtol=1e-4)


def test_masks_at_start_middle_and_end(mlm, expected_fill):
    text = "Masks at the start, middle and end."
    spans = [(0, 5), (13, 18), (30, len(text))]
    result = mlm.fill(text, spans)
    check_against_expected(result, text, spans, expected_fill)
    assert all(0 < p <= 1 for s in result.spans for p in s.probabilities)
    # Text outside the spans is kept (ASCII survives any invalid predicted bytes).
    assert text[5:13] in result.text and text[18:30] in result.text


def test_batch_of_different_lengths_equals_one_at_a_time(mlm, expected_fill):
    texts = ["a_c", "x" * 17 + "____", "The ___ sat on the mat.", "y" * 40 + "_____", ""]
    spans = [text_task.spans_from_placeholder(t) for t in texts]
    batch = mlm.fill(texts, spans)
    assert [r.input for r in batch] == texts
    for text, text_spans, together in zip(texts, spans, batch):
        alone = mlm.fill(text, text_spans)
        assert together.text == alone.text
        for a, b in zip(together.spans, alone.spans):
            assert a.predicted == b.predicted
            np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=1e-5)
        check_against_expected(together, text, text_spans, expected_fill)


def test_multibyte_utf8(mlm, expected_fill):
    text = "naïve café, 日本語 ok"
    start = text.index("日")
    spans = [(3, 4), (start, start + 2)]  # "v"; two 3-byte characters.
    result = mlm.fill(text, spans)
    check_against_expected(result, text, spans, expected_fill)
    assert result.spans[0].byte_start == 4  # "ï" is two bytes.
    assert result.spans[1].byte_end - result.spans[1].byte_start == 6
    assert len(result.spans[1].probabilities) == 6


def test_invalid_utf8_predictions_decode_with_replacement(mlm, monkeypatch):
    def predict(params, state, tokens, mask):  # Every byte predicted as 0xC3, a lone lead byte.
        return np.full(tokens.shape, 0xC3 + 6), np.full(tokens.shape, 0.5, np.float32)

    monkeypatch.setattr(mlm, "_predict", predict)
    result = mlm.fill("ab__", [(2, 4)])
    assert result.spans[0].predicted == b"\xc3\xc3"
    assert result.text == "ab\ufffd\ufffd"
    assert result.spans[0].text == "\ufffd\ufffd"


def test_too_long_input_states_limit_and_length(mlm):
    with pytest.raises(ValueError, match=r"49 bytes.*max_seq_len=48"):
        mlm.fill("a" * 49, [(0, 1)])
    # 17 characters, but 51 bytes.
    with pytest.raises(ValueError, match=r"texts\[1\] is 51 bytes"):
        mlm.fill(["ok", "語" * 17], [[(0, 1)], [(0, 1)]])
    mlm.fill("a" * MAX_LEN, [(0, 1)])  # Exactly the limit is fine.


def test_compilations_are_bounded_by_buckets(weights, monkeypatch):
    assert text_task._bucket_lengths(MAX_LEN) == (16, 32, 48)
    assert text_task._bucket_lengths(2048) == (16, 32, 64, 128, 256, 512, 1024, 2048)
    traces = []
    factory = models.masked_language_model

    def spied(**sizes):
        # The task calls apply only inside its jitted function: once per trace.
        model = factory(**sizes)
        return model._replace(apply=lambda *a, **k: traces.append(1) or model.apply(*a, **k))

    monkeypatch.setattr(models, "masked_language_model", spied)
    mlm = text_task.MaskedLanguageModel(*weights, **SIZES)
    for n in range(17, 33):  # One bucket, one batch size: one trace.
        mlm.fill("z" * n, [(0, 1)])
    assert len(traces) == 1


def test_spans_from_placeholder():
    assert text_task.spans_from_placeholder("a __ b _ c___") == [(2, 4), (7, 8), (10, 13)]
    assert text_task.spans_from_placeholder("no gaps") == []
    assert text_task.spans_from_placeholder("x..y.", ".") == [(1, 3), (4, 5)]
    assert text_task.spans_from_placeholder("日本＿＿語", "＿") == [(2, 4)]
    with pytest.raises(ValueError, match="one character"):
        text_task.spans_from_placeholder("a__", "__")
    with pytest.raises(TypeError, match="str"):
        text_task.spans_from_placeholder(b"a__")


def test_bad_spans_are_rejected(mlm):
    with pytest.raises(ValueError, match="overlapping"):
        mlm.fill("abcdef", [(0, 3), (2, 4)])
    with pytest.raises(ValueError, match=r"0 <= start < end <= 3"):
        mlm.fill("abc", [(1, 4)])
    with pytest.raises(ValueError, match=r"0 <= start < end"):
        mlm.fill("abc", [(2, 2)])
    with pytest.raises(TypeError, match="pairs"):
        mlm.fill("abc", (0, 1))
    with pytest.raises(ValueError, match="one entry per text"):
        mlm.fill(["abc", "de"], [[(0, 1)]])
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        mlm.fill(["abc", b"de"], [[], []])
    with pytest.raises(checkpoint.CheckpointError):
        weights = checkpoint.load(ref.checkpoint_path("mlm"))
        text_task.MaskedLanguageModel(*weights, **dict(SIZES, d_model=16))


def test_from_pretrained_reads_a_checkpoint_file(mlm):
    path = str(ref.checkpoint_path("mlm"))
    loaded = text_task.MaskedLanguageModel.from_pretrained(path, batch_size=2, **SIZES)
    assert loaded.max_seq_len == MAX_LEN and loaded.batch_size == 2
    text = "from a file"
    assert loaded.fill(text, [(4, 6)]).text == mlm.fill(text, [(4, 6)]).text
    with pytest.raises(checkpoint.CheckpointError, match="mlm.pystate"):
        text_task.MaskedLanguageModel.from_pretrained(path, **dict(SIZES, num_latents=8))


def test_spans_may_come_unordered_and_as_arrays(mlm):
    text = "unordered spans"
    forward = mlm.fill(text, [(0, 2), (10, 15)])
    backward = mlm.fill(text, np.array([[10, 15], [0, 2]]))
    assert forward.text == backward.text
    assert [s.start for s in backward.spans] == [10, 0]
