"""BytesTokenizer: UTF-8 bytes shifted by 6 reserved ids."""

import numpy as np
import pytest

from perceiver import bytes_tokenizer


@pytest.fixture
def tok():
    return bytes_tokenizer.BytesTokenizer()


def test_vocab_and_special_tokens(tok):
    assert tok.vocab_size == 262
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == (0, 1, 2)
    assert (tok.mask_token, tok.cls_token, tok.sep_token) == (3, 4, 5)


@pytest.mark.parametrize(
    "text",
    ["", "a", "Hello, world!", "The quick brown fox\njumps\tover 0123456789 ~", "".join(map(chr, range(128)))],
)
def test_ascii_round_trip(tok, text):
    ids = tok.to_int(text)
    assert ids.dtype == np.int32
    assert ids.shape == (len(text),)
    np.testing.assert_array_equal(ids, np.array([ord(ch) + 6 for ch in text], np.int32).reshape(-1))
    assert tok.to_string(ids) == text


@pytest.mark.parametrize("text", ["héllo wörld ✓ 日本語 🙂", "Ω≈ç√∫", "🙂🙃", "naïve café"])
def test_multibyte_utf8_round_trip(tok, text):
    ids = tok.to_int(text)
    raw = text.encode("utf-8")
    assert ids.dtype == np.int32
    assert len(ids) == len(raw)
    np.testing.assert_array_equal(ids, np.frombuffer(raw, np.uint8).astype(np.int32) + 6)
    assert tok.to_string(ids) == text


def test_to_int_offset_is_six(tok):
    np.testing.assert_array_equal(tok.to_int("\x00\x01A"), np.array([6, 7, 71], np.int32))
    ids = tok.to_int(bytes(range(256)))
    np.testing.assert_array_equal(ids, np.arange(6, 262, dtype=np.int32))
    assert ids.max() == tok.vocab_size - 1


@pytest.mark.parametrize("data", [b"abc\xff\x00", bytearray(b"xyz"), memoryview(b"\x80\x7f")])
def test_bytes_input(tok, data):
    ids = tok.to_int(data)
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, np.frombuffer(bytes(data), np.uint8).astype(np.int32) + 6)


def test_special_tokens_dropped(tok):
    text = "hi ✓"
    body = tok.to_int(text)
    ids = np.concatenate(
        [[tok.bos_token, tok.cls_token], body[:2], [tok.mask_token, tok.sep_token], body[2:],
         [tok.eos_token, tok.pad_token, tok.pad_token]]
    ).astype(np.int32)
    assert tok.to_string(ids) == text
    assert tok.to_string(np.arange(6, dtype=np.int32)) == ""
    assert tok.to_string(np.array([], np.int32)) == ""


def test_special_token_inside_multibyte_sequence_is_dropped(tok):
    # The reserved id is removed before decoding, so the character survives.
    ids = list(tok.to_int("✓"))
    ids.insert(1, tok.pad_token)
    assert tok.to_string(np.array(ids, np.int32)) == "✓"


@pytest.mark.parametrize("raw", [b"\xff", b"a\xc3", b"\xe2\x9c", b"\x80abc", b"ok\xfe\xffok"])
def test_invalid_utf8_gives_replacement_char(tok, raw):
    got = tok.to_string(tok.to_int(raw))
    assert "\ufffd" in got
    assert got == raw.decode("utf-8", errors="replace")


def test_to_string_accepts_lists_and_other_int_dtypes(tok):
    ids = [ord(c) + 6 for c in "abc"]
    assert tok.to_string(ids) == "abc"
    assert tok.to_string(np.array(ids, np.int64)) == "abc"
    assert tok.to_string(np.array(ids, np.uint16)) == "abc"


@pytest.mark.parametrize("bad", [[-1], [262], [70, 300], [1000, 7], [-5, 262]])
def test_out_of_range_ids_raise(tok, bad):
    with pytest.raises(ValueError, match="inputs"):
        tok.to_string(np.array(bad, np.int32))


@pytest.mark.parametrize("bad", [None, 5, 3.0, ["a", "b"], np.array([1, 2]), ("x",)])
def test_to_int_non_str_raises_type_error(tok, bad):
    with pytest.raises(TypeError, match="inputs"):
        tok.to_int(bad)
