"""Text generation with a Perceiver AR byte language model, from a checkpoint you trained.

    generator = TextGenerator.from_pretrained("lm.pystate")
    generator.generate("def main(", max_new_bytes=200, temperature=0.8, top_p=0.95)

The model is `perceiver.models.byte_language_model`; `perceiver train
--config perceiver_ar --export lm.pystate` writes one with its description
(`lm.json`), which gives its sizes. Sampling runs with the key/value cache
of `perceiver.perceiver_ar_sampling`; past the model's context the window
slides.
"""

import codecs
import warnings
from typing import Callable, List, Mapping, Optional, Sequence, Union

import jax
import numpy as np

from perceiver import _validation
from perceiver import language_model
from perceiver import models
from perceiver import perceiver_ar_sampling as sampling
from perceiver.tasks import _loading

FACTORY = "byte_language_model"


class ContextWarning(UserWarning):
    """A prompt (with what is generated) is longer than the model's context: the window slides."""


class TextGenerator:
    """Continues UTF-8 texts byte by byte with a Perceiver AR byte language model.

    Attributes:
      max_context_length: the most bytes the model reads; older ones slide out.
      num_latents: the latents it predicts with (the cache's slots).
      sizes: `byte_language_model`'s sizes.
    """

    def __init__(self, params: Mapping, state: Optional[Mapping] = None, **sizes):
        """Wraps parameters of `perceiver.models.byte_language_model(**sizes)`.

        Raises:
          TypeError: for an unknown size keyword.
          ValueError: for sizes out of range (see `language_model.perceiver_ar_config`).
          perceiver.checkpoint.CheckpointError: if params or state do not fit
            the model, listing every difference.
        """
        self.sizes = models.factory_sizes(FACTORY, **sizes)
        self._config = language_model.perceiver_ar_config(**self.sizes)
        state = {} if state is None else state
        _loading.check_fits(FACTORY, params, state, **sizes)
        self.max_context_length: int = self.sizes["max_context_length"]
        self.num_latents: int = self.sizes["num_latents"]
        self._params = jax.device_put(params)

    @classmethod
    def from_pretrained(
        cls, path: str, *, cache_dir: Optional[str] = None, progress: bool = True, **sizes
    ) -> "TextGenerator":
        """The byte language model in checkpoint file `path`.

        Its description (`NAME.json` beside it) gives its sizes; keywords
        given here override them.

        Raises:
          ValueError: for a published name (none is a byte language model),
            or a word that is neither a file nor a checkpoint name.
          FileNotFoundError: for a path to nothing.
          perceiver.checkpoint.CheckpointError: for a folder or a file that is
            not a checkpoint, saying what it is (a description, an image...);
            if the file does not fit, or its description is of another
            model (naming the task that runs it) or of other tokens.
        """
        from perceiver import checkpoint, hub

        if _loading.is_published(path):
            raise ValueError(
                f"{path!r} is a published {hub.get(path).factory} checkpoint, not a byte language "
                "model; train one (perceiver train --config perceiver_ar ... --export lm.pystate) "
                "and give that file."
            )
        path = _loading.resolve_for(path, FACTORY)
        description = _loading.read_description(path, FACTORY)
        description.check_bytes_tokenizer()
        reserved = description.tokenizer.get("reserved", language_model.NUM_RESERVED)
        if reserved != language_model.NUM_RESERVED:
            raise checkpoint.CheckpointError(
                f"{description.source}: tokenizer reserved must be {language_model.NUM_RESERVED} "
                f"(byte b is token b + {language_model.NUM_RESERVED}); got {reserved!r}."
            )
        sizes = description.sizes_with(sizes)
        return _loading.build_from_checkpoint(
            lambda params, state: cls(params, state, **sizes),
            path, cache_dir=cache_dir, progress=progress, description=description,
        )

    def generate(
        self,
        prompts: Union[str, Sequence[str]],
        *,
        max_new_bytes: int = 256,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        use_cache: bool = True,
        on_bytes: Optional[Callable[[int, bytes], None]] = None,
    ) -> Union[str, List[str]]:
        """Continuations of `prompts`, without the prompts, as text.

        Each continuation ends after `max_new_bytes` bytes or at the end of
        a document (the model's EOS). Bytes that are not valid UTF-8 become
        U+FFFD. Prompts of the same length in bytes run as one batch; prompt
        i draws from its own key (`seed` folded with i), so its continuation
        does not depend on the prompts beside it.

        Args:
          prompts: a text, or a list of them (each non-empty).
          max_new_bytes: bytes to generate for each (>= 1).
          temperature: 0 for greedy decoding; else the logits are divided by it.
          top_k: draw among the k most probable bytes (0: all).
          top_p: draw among the most probable bytes whose probability
            reaches top_p (nucleus sampling; 1: all).
          seed: for the draws.
          use_cache: False runs the whole window at every step (the same
            tokens, slower; for checking).
          on_bytes: called with (prompt index, new bytes) as they come,
            before the end of a document is known.

        Returns:
          a str for a str, a list of str for a list.

        Warns:
          ContextWarning: once, when a prompt and its continuation exceed
            the context (the window slides; the earliest bytes are no
            longer read).

        Raises:
          ValueError: for an empty prompt or list, a max_new_bytes below 1,
            or a sampling option out of range (negative or NaN temperature,
            top_p outside (0, 1], negative top_k).
          TypeError: for prompts that are not str.
        """
        single = isinstance(prompts, str)
        texts = [prompts] if single else prompts
        if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Sequence):
            raise TypeError(f"prompts must be a str or a list of str; got {type(prompts).__name__}.")
        if not texts:
            raise ValueError("prompts is an empty list; give at least one text.")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"prompts[{i}] must be a str; got {type(text).__name__}.")
            if not text:
                where = "the prompt" if single else f"prompts[{i}]"
                raise ValueError(f"{where} is empty; give at least one character to continue.")
        _validation.check_positive_int("max_new_bytes", max_new_bytes)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int; got {seed!r}.")
        options = sampling.SamplingOptions(temperature=temperature, top_k=top_k, top_p=top_p)
        encoded = [language_model.encode(text) for text in texts]
        longest = max(len(tokens) for tokens in encoded) + max_new_bytes
        if longest > self.max_context_length:
            warnings.warn(
                f"a prompt and its {max_new_bytes} new bytes make {longest} tokens, more than the "
                f"model's context of {self.max_context_length}: the window slides, and the "
                "earliest bytes are no longer read.",
                ContextWarning, stacklevel=2,
            )
        out: List[bytes] = [b""] * len(texts)
        groups = {}
        for i, tokens in enumerate(encoded):
            groups.setdefault(len(tokens), []).append(i)
        for rows in groups.values():
            prompt = np.stack([encoded[i] for i in rows])

            def streamed(tokens, rows=rows):
                if on_bytes is not None:
                    for row, token in zip(rows, tokens):
                        if token >= language_model.NUM_RESERVED:
                            on_bytes(row, language_model.to_bytes([token]))

            tokens = sampling.generate(
                self._config, self._params, prompt, max_new=max_new_bytes,
                context=self.max_context_length, latents=self._cache_latents(), options=options,
                seed=int(seed), row_ids=rows, use_cache=use_cache, on_token=streamed,
                never=language_model.NEVER_DRAWN, stop=language_model.EOS,
            )
            for row, row_tokens in zip(rows, tokens):
                ends = np.flatnonzero(row_tokens == language_model.EOS)
                out[row] = language_model.to_bytes(row_tokens[: ends[0]] if ends.size else row_tokens)
        texts_out = [b.decode("utf-8", errors="replace") for b in out]
        return texts_out[0] if single else texts_out

    def _cache_latents(self) -> int:
        # The sampler's latent slots are refilled to half when full: an even count, >= 4.
        return max(4, self.num_latents - self.num_latents % 2)


class Utf8Stream:
    """Writes bytes as they come as text, holding back a character split between writes.

    Invalid sequences become U+FFFD; `close` writes what is held (an
    incomplete character as U+FFFD).
    """

    def __init__(self, write: Callable[[str], None]):
        self._write = write
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def write(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        if text:
            self._write(text)

    def close(self) -> None:
        text = self._decoder.decode(b"", final=True)
        if text:
            self._write(text)
