"""UTF-8 byte tokenizer used by the Perceiver IO language model.

Token ids 0..5 are reserved (PAD, BOS, EOS, MASK, CLS, SEP); byte b is token
b + 6, so the vocabulary has 262 entries.
"""

from typing import Union

import numpy as np

_NUM_RESERVED_TOKENS = 6


class BytesTokenizer:
    """Maps strings to UTF-8 byte tokens and back."""

    def __init__(self):
        self._num_reserved_tokens = _NUM_RESERVED_TOKENS

    def to_string(self, inputs: np.ndarray) -> str:
        """Decodes tokens `[T]` to text, dropping special tokens.

        Invalid UTF-8 sequences become U+FFFD rather than raising.

        Raises:
          ValueError: if a token is outside [0, vocab_size).
        """
        tokens = np.asarray(inputs)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(
                f"inputs must hold token ids in [0, {self.vocab_size}); got values in "
                f"[{tokens.min()}, {tokens.max()}]."
            )
        byte_values = tokens[tokens >= self._num_reserved_tokens] - self._num_reserved_tokens
        return byte_values.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def to_int(self, inputs: Union[str, bytes]) -> np.ndarray:
        """Encodes text (as UTF-8) or raw bytes to int32 tokens `[T]`.

        Raises:
          TypeError: if `inputs` is neither `str` nor `bytes`.
        """
        if isinstance(inputs, str):
            inputs = inputs.encode("utf-8")
        if not isinstance(inputs, (bytes, bytearray, memoryview)):
            raise TypeError(f"inputs must be str or bytes; got {type(inputs).__name__}.")
        tokens = np.frombuffer(bytes(inputs), np.uint8).astype(np.int32)
        return tokens + np.int32(self._num_reserved_tokens)

    @property
    def vocab_size(self) -> int:
        return 256 + self._num_reserved_tokens

    @property
    def pad_token(self) -> int:
        return 0

    @property
    def bos_token(self) -> int:
        return 1

    @property
    def eos_token(self) -> int:
        return 2

    @property
    def mask_token(self) -> int:
        return 3

    @property
    def cls_token(self) -> int:
        return 4

    @property
    def sep_token(self) -> int:
        return 5
