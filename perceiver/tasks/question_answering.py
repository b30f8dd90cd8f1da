"""Extractive question answering with a byte-level Perceiver IO (`perceiver.models.question_answerer`).

Such a model is what `perceiver train --config finetune_qa` trains: the byte
MLM's embedding and encoder with a decoder scoring each byte as an answer's
first and last. Exported with `--export model.pystate`, its description
(`model.json`) gives its sizes and window settings, so

    answerer = QuestionAnswerer.from_pretrained("model.pystate")
    answerer.answer("Who founded it?", "It was founded by Ada Lovelace.")
    # [("Ada Lovelace", 18, 30, 7.3)]

Each pair is read as `[CLS] question [SEP] context` bytes
(`perceiver.datasets.squad.encode_qa`); a context longer than one window is
read in overlapping windows and the best span over all of them wins
(`best_over_windows`). A question longer than `max_question_bytes` is cut
to its first bytes, as in training.
"""

import functools
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from perceiver import _validation
from perceiver import models
from perceiver.datasets import squad
from perceiver.tasks import _loading
from perceiver.tasks import text as text_lib

FACTORY = "question_answerer"
# Window settings when neither the caller nor the description gives them.
DEFAULTS = {"stride": 1536, "max_question_bytes": None, "max_answer_bytes": 100}


def clip_question(question: str, max_bytes: int) -> str:
    """`question` cut to at most `max_bytes` UTF-8 bytes, never inside a character."""
    return question.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def encode_pair(question: str, context: str, seq_len: int, stride: int, max_question_bytes: int,
                answers: Sequence[squad.Answer] = ()) -> List[squad.QAWindow]:
    """`encode_qa` of the clipped question: the windows training and answering both read.

    Raises:
      ValueError: for an empty question or context, or settings that leave no room for context.
    """
    if not question.strip() or not context:
        raise ValueError("each question and context must be non-empty text.")
    return squad.encode_qa(clip_question(question, max_question_bytes), context, seq_len, stride, answers)


class QuestionAnswerer:
    """Answers questions with spans of their contexts, with a `perceiver.models.question_answerer`.

    Attributes:
      seq_len: positions per window (question and context bytes with CLS, SEP).
      stride: context bytes between window starts.
      max_question_bytes: question bytes read; the rest is cut off.
      max_answer_bytes: the longest answer considered, in bytes.
      batch_size: most windows per model call.
      sizes: the `question_answerer` keywords of the model.
    """

    def __init__(
        self,
        params: Mapping,
        state: Optional[Mapping] = None,
        *,
        seq_len: Optional[int] = None,
        stride: int = DEFAULTS["stride"],
        max_question_bytes: Optional[int] = None,
        max_answer_bytes: int = DEFAULTS["max_answer_bytes"],
        batch_size: int = 8,
        **sizes,
    ):
        """Wraps parameters of `perceiver.models.question_answerer(**sizes)`.

        Args:
          params, state: the model's trees (state None means `{}`).
          seq_len: positions per window, at most max_seq_len (default).
          stride, max_answer_bytes, batch_size: as the attributes.
          max_question_bytes: as the attribute; None: 256 or seq_len // 2, the smaller.
          **sizes: `question_answerer`'s keywords (max_seq_len, d_model, ...).

        Raises:
          TypeError: for an unknown size keyword or a non-int setting.
          ValueError: for settings out of range (max_question_bytes must leave
            context room in a window).
          perceiver.checkpoint.CheckpointError: if params or state do not fit the model.
        """
        config = models.factory_sizes(FACTORY, **sizes)
        self.max_seq_len: int = config["max_seq_len"]
        seq_len = self.max_seq_len if seq_len is None else seq_len
        if max_question_bytes is None and isinstance(seq_len, int):
            max_question_bytes = min(256, max(seq_len // 2, 1))
        for name, value in (("seq_len", seq_len), ("stride", stride), ("batch_size", batch_size),
                            ("max_question_bytes", max_question_bytes), ("max_answer_bytes", max_answer_bytes)):
            _validation.check_positive_int(name, value)
        if seq_len > self.max_seq_len:
            raise ValueError(f"seq_len must be at most max_seq_len={self.max_seq_len}; got {seq_len}.")
        if max_question_bytes > seq_len - 3:
            raise ValueError(
                f"max_question_bytes must be at most seq_len - 3 = {seq_len - 3} (CLS, SEP and one "
                f"context byte); got {max_question_bytes}."
            )
        state = {} if state is None else state
        _loading.check_fits(FACTORY, params, state, **sizes)
        self.seq_len, self.stride, self.batch_size = int(seq_len), int(stride), int(batch_size)
        self.max_question_bytes, self.max_answer_bytes = int(max_question_bytes), int(max_answer_bytes)
        self.sizes = dict(sizes)
        self.buckets = text_lib._bucket_lengths(self.seq_len)
        self._params = jax.device_put(params)
        self._state = jax.device_put(state)
        self._logits = _compiled(tuple(sorted(config.items())))

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        cache_dir: Optional[str] = None,
        progress: bool = True,
        seq_len: Optional[int] = None,
        stride: Optional[int] = None,
        max_question_bytes: Optional[int] = None,
        max_answer_bytes: Optional[int] = None,
        batch_size: Optional[int] = None,
        **sizes,
    ) -> "QuestionAnswerer":
        """A question answerer from a checkpoint file, e.g. one `perceiver train --export` wrote.

        The file's description gives its sizes and `task.seq_len`, `stride`,
        `max_question_bytes`, `max_answer_bytes`; keywords given here override it.

        Args:
          name_or_path: the path of a `question_answerer` checkpoint (none is published).
          cache_dir, progress: as for `perceiver.hub.fetch`.
          seq_len, stride, max_question_bytes, max_answer_bytes, batch_size:
            as in the constructor; None: the description's, else the defaults.
          **sizes: `question_answerer`'s keywords (default: the description's).

        Raises:
          ValueError: for a published name (none is a question answerer).
          FileNotFoundError: for a path to nothing.
          perceiver.checkpoint.CheckpointError: for a file that is not a
            checkpoint, does not fit, or whose description is of another model
            (naming the task that runs it) or tokenizer.
        """
        from perceiver import hub

        if _loading.is_published(name_or_path):
            factory = hub.get(name_or_path).factory
            raise ValueError(
                f"name_or_path {name_or_path!r} is a published {factory} checkpoint, not a question "
                "answerer; fine-tune one from it (perceiver train --config finetune_qa ... --export "
                "model.pystate) and give that file."
            )
        name_or_path = _loading.resolve_for(name_or_path, FACTORY)
        description = _loading.read_description(name_or_path, FACTORY)
        description.check_bytes_tokenizer()
        sizes = description.sizes_with(sizes)
        options = {
            "seq_len": description.option("seq_len", seq_len, None),
            "batch_size": description.option("batch_size", batch_size, 8),
        }
        given = {"stride": stride, "max_question_bytes": max_question_bytes, "max_answer_bytes": max_answer_bytes}
        options.update((k, description.option(k, v, DEFAULTS[k])) for k, v in given.items())
        return _loading.build_from_checkpoint(
            lambda params, state: cls(params, state, **options, **sizes),
            name_or_path,
            cache_dir=cache_dir,
            progress=progress,
            description=description,
        )

    def windows(self, question: str, context: str) -> List[squad.QAWindow]:
        """The windows one pair is read in, each as short as its bytes allow (a bucket length).

        Raises:
          ValueError: for an empty question or context.
        """
        question = clip_question(question, self.max_question_bytes)
        needed = len(question.encode("utf-8")) + len(context.encode("utf-8")) + 2
        length = text_lib._bucket(min(needed, self.seq_len), self.buckets)
        return encode_pair(question, context, length, self.stride, self.max_question_bytes)

    def answer(
        self, questions: Union[str, Sequence[str]], contexts: Union[str, Sequence[str]]
    ) -> List[Tuple[str, int, int, float]]:
        """The best answer span of each (question, context) pair.

        Args:
          questions: one str, or a sequence of str.
          contexts: one str (for every question), or one per question.

        Returns:
          Per pair `(text, start, end, score)`: `context[start:end] == text`
          (character offsets), score the answer's start plus end logit.

        Raises:
          TypeError: for a question or context that is not str.
          ValueError: for an empty question or context, or as many contexts
            as questions not given.
        """
        questions = [questions] if isinstance(questions, str) else questions
        contexts = [contexts] * len(questions) if isinstance(contexts, str) else contexts
        for name, texts in (("questions", questions), ("contexts", contexts)):
            if isinstance(texts, bytes) or not isinstance(texts, Sequence):
                raise TypeError(f"{name} must be a str or a sequence of str; got {type(texts).__name__}.")
            for i, text in enumerate(texts):
                if not isinstance(text, str):
                    raise TypeError(f"{name}[{i}] must be a str; got {type(text).__name__}.")
        if len(contexts) != len(questions):
            raise ValueError(f"{len(questions)} questions and {len(contexts)} contexts; give one context "
                             "for all or one per question.")
        windows = []
        for i, (question, context) in enumerate(zip(questions, contexts)):
            try:
                windows.append(self.windows(question, context))
            except ValueError as e:
                raise ValueError(f"pair {i}: {e}") from None
        starts, ends = self._window_logits([w for ws in windows for w in ws])
        results, first = [], 0
        for ws in windows:
            span = slice(first, first + len(ws))
            results.append(squad.best_over_windows(starts[span], ends[span], ws, self.max_answer_bytes))
            first += len(ws)
        return results

    def _window_logits(self, windows: Sequence[squad.QAWindow]) -> Tuple[List[np.ndarray], List[np.ndarray]]:
        """Start and end logits `[T]` of each window; windows batched by length, padded rows masked."""
        starts: List[np.ndarray] = [None] * len(windows)
        ends: List[np.ndarray] = [None] * len(windows)
        ids = [w.ids[w.mask] for w in windows]
        for batch, tokens, mask in text_lib.padded_batches(ids, self.buckets, self.batch_size, squad.PAD):
            start, end = self._logits(self._params, self._state, tokens, mask)
            start, end = np.asarray(start), np.asarray(end)
            for row, index in enumerate(batch):
                # Back to the window's own length (its bucket), which best_span reads.
                length = len(windows[index].ids)
                starts[index] = _fit(start[row], length)
                ends[index] = _fit(end[row], length)
        return starts, ends


@functools.lru_cache(maxsize=8)
def _compiled(sizes: Tuple[Tuple[str, Any], ...]):
    """The jitted `(params, state, tokens, mask) -> (start, end)` logits of one model's sizes.

    Shared by the answerers of one model, so a second one compiles nothing anew.
    """
    model = models.question_answerer(**dict(sizes))

    def logits(params, state, tokens, mask):
        (start, end), _ = model.apply(params, state, None, tokens, mask)
        # Only real bytes can be an answer's ends.
        real = mask > 0
        return jnp.where(real, start, -jnp.inf), jnp.where(real, end, -jnp.inf)

    return jax.jit(logits)


def _fit(logits: np.ndarray, length: int) -> np.ndarray:
    """`logits` cut or padded (with -inf) to `length` positions."""
    if len(logits) >= length:
        return logits[:length]
    return np.concatenate([logits, np.full(length - len(logits), -np.inf, logits.dtype)])

