"""Text data sets as UTF-8 byte tokens, and masked-byte-span masking.

Texts come from plain files (each file one document) or JSON lines (one
document per line, its text under `text_field`). Tokens are
`perceiver.bytes_tokenizer.BytesTokenizer` ids (byte + 6) for Perceiver IO,
`perceiver.language_model` ids (byte + 3) for the causal windows of
Perceiver AR (`ByteWindows`).
"""

import glob
import json
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import grain.python as grain
import numpy as np

from perceiver import language_model
from perceiver.bytes_tokenizer import BytesTokenizer

TOKENIZER = BytesTokenizer()


def expand_paths(paths: Sequence[str]) -> List[str]:
    """Files named by paths, globs or folders (recursively), sorted and de-duplicated.

    Raises:
      FileNotFoundError: if a path matches no file.
    """
    out: List[str] = []
    for path in paths:
        path = os.path.expanduser(path)
        if os.path.isdir(path):
            found = sorted(
                os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if not f.startswith(".")
            )
        else:
            found = sorted(glob.glob(path))
        if not found:
            raise FileNotFoundError(f"text path {path!r} matches no file.")
        out.extend(found)
    return sorted(dict.fromkeys(out))


def read_documents(
    paths: Sequence[str], text_field: str = "text", label_field: Optional[str] = None
) -> Tuple[List[str], List[object]]:
    """Documents (and labels) from plain files and `.jsonl`/`.json` lines files.

    Returns:
      `(texts, labels)`; labels are None unless `label_field` is given.

    Raises:
      ValueError: for a JSON line without `text_field` (or `label_field`).
    """
    texts: List[str] = []
    labels: List[object] = []
    for path in expand_paths(paths):
        if path.endswith((".jsonl", ".json")):
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except (ValueError, RecursionError) as e:  # RecursionError: nested too deep
                        raise ValueError(f"{path}:{number}: not a JSON line ({str(e)[:80]}).") from None
                    if not isinstance(record, dict):
                        raise ValueError(
                            f"{path}:{number}: a JSON line must be an object; got {type(record).__name__}."
                        )
                    if text_field not in record or (label_field and label_field not in record):
                        want = [text_field] + ([label_field] if label_field else [])
                        raise ValueError(f"{path}:{number}: a JSON line needs the fields {want}.")
                    texts.append(str(record[text_field]))
                    labels.append(record[label_field] if label_field else None)
        else:
            with open(path, encoding="utf-8", errors="replace") as f:
                texts.append(f.read())
            labels.append(None)
    return texts, labels


class ByteChunks:
    """A random-access source of fixed-length byte chunks of a corpus (for MLM).

    Documents are tokenised and joined, each followed by the EOS token, then
    cut into consecutive windows of `seq_len` tokens; the last window is
    padded. Record i is `{'tokens': [T] int32, 'mask': [T] int32}`.
    """

    def __init__(self, paths: Sequence[str], seq_len: int, text_field: str = "text"):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1; got {seq_len}.")
        texts, _ = read_documents(paths, text_field)
        pieces = []
        for text in texts:
            pieces.append(TOKENIZER.to_int(text))
            pieces.append(np.array([TOKENIZER.eos_token], np.int32))
        tokens = np.concatenate(pieces) if pieces else np.zeros((0,), np.int32)
        if tokens.size == 0:
            raise ValueError(f"the text files {list(paths)} hold no text.")
        # uint16 halves memory; every id is below 262.
        self.tokens = tokens.astype(np.uint16)
        self.seq_len = int(seq_len)
        self.paths = list(paths)

    def __len__(self) -> int:
        return -(-self.tokens.size // self.seq_len)

    def __getitem__(self, index: int) -> Mapping[str, np.ndarray]:
        start = int(index) * self.seq_len
        chunk = self.tokens[start : start + self.seq_len].astype(np.int32)
        tokens = np.full((self.seq_len,), TOKENIZER.pad_token, np.int32)
        tokens[: chunk.size] = chunk
        mask = np.zeros((self.seq_len,), np.int32)
        mask[: chunk.size] = 1
        return {"tokens": tokens, "mask": mask}

    def __repr__(self) -> str:
        return f"ByteChunks(paths={self.paths!r}, tokens={self.tokens.size}, seq_len={self.seq_len})"


class ByteWindows:
    """Windows of a corpus for a causal model that predicts its last `predicted` positions.

    Documents become SOS, their bytes, EOS (`perceiver.language_model`
    tokens) and are joined. Record i is `{'inputs': [T], 'targets': [T]}`
    int32, targets the inputs shifted by one, 0-padded at the end: the window
    whose last target is token `(i + 1) * predicted` (or the corpus's last),
    with as much context before it as fits; targets before token
    `i * predicted + 1` are 0 (padding, not scored). A model predicting the last
    `predicted` real positions of each window so scores every token after
    the first exactly once: the windows are an evaluation of the whole
    corpus, and an epoch of training on every token.

    Raises:
      ValueError: for seq_len or predicted < 1, predicted > seq_len, or
        files without text.
      FileNotFoundError: for a path that matches no file.
    """

    def __init__(self, paths: Sequence[str], seq_len: int, predicted: int, text_field: str = "text"):
        if not 1 <= predicted <= seq_len:
            raise ValueError(f"need 1 <= predicted ({predicted}) <= seq_len ({seq_len}).")
        texts, _ = read_documents(paths, text_field)
        pieces = [language_model.encode(t) for t in texts if t]
        pieces = [np.append(p, np.int32(language_model.EOS)) for p in pieces]
        if not pieces:
            raise ValueError(f"the text files {list(paths)} hold no text.")
        self.tokens = np.concatenate(pieces).astype(np.uint16)  # every id is below 259
        self.seq_len = int(seq_len)
        self.predicted = int(predicted)
        self.paths = list(paths)

    def __len__(self) -> int:
        return -(-(self.tokens.size - 1) // self.predicted)

    def __getitem__(self, index: int) -> Mapping[str, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} of {len(self)}")
        end = min((int(index) + 1) * self.predicted, self.tokens.size - 1)  # the last target
        start = max(0, end - self.seq_len)
        chunk = self.tokens[start : end + 1].astype(np.int32)
        inputs = np.zeros((self.seq_len,), np.int32)
        targets = np.zeros((self.seq_len,), np.int32)
        inputs[: chunk.size - 1] = chunk[:-1]
        targets[: chunk.size - 1] = chunk[1:]
        # Targets earlier windows scored are padding here: the corpus's last
        # window is short, and its latents reach back into the one before.
        targets[: max(0, int(index) * self.predicted - start)] = 0
        return {"inputs": inputs, "targets": targets}

    def __repr__(self) -> str:
        return (f"ByteWindows(paths={self.paths!r}, tokens={self.tokens.size}, "
                f"seq_len={self.seq_len}, predicted={self.predicted})")


class TextClassificationSource:
    """Labelled texts as `{'tokens': [T], 'mask': [T], 'label': int}` records.

    Reads JSON lines with `text_field` and `label_field`, or a folder with one
    sub-folder of text files per class. Texts longer than `seq_len` bytes are
    truncated; shorter ones padded (mask 0).

    Args:
      path: a `.jsonl` file (or glob) or a folder of class folders.
      seq_len: tokens per example.
      classes: label names in order (default: sorted labels of this set);
        pass the training set's to an evaluation set. Integer labels in
        JSON are used as they are when `classes` is None.
    """

    def __init__(
        self,
        path: str,
        seq_len: int,
        classes: Optional[Sequence[str]] = None,
        text_field: str = "text",
        label_field: str = "label",
    ):
        path = os.path.expanduser(path)
        if os.path.isdir(path) and not any(
            f.endswith((".jsonl", ".json")) for f in os.listdir(path)
        ):
            names = sorted(e.name for e in os.scandir(path) if e.is_dir())
            texts, labels = [], []
            for name in names:
                docs, _ = read_documents([os.path.join(path, name)])
                texts += docs
                labels += [name] * len(docs)
        else:
            texts, labels = read_documents([path], text_field, label_field)
        if not texts:
            raise ValueError(f"no labelled text found in {path!r}.")
        if classes is None:
            if all(isinstance(l, int) and not isinstance(l, bool) for l in labels):
                classes = [str(i) for i in range(max(labels) + 1)]
            else:
                classes = sorted({str(l) for l in labels})
        self.classes = [str(c) for c in classes]
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted({str(l) for l in labels} - set(index))
        if unknown:
            raise ValueError(
                f"labels {unknown[:5]} in {path!r} are not among the classes {self.classes[:10]}."
            )
        self.labels = np.array([index[str(l)] for l in labels], np.int32)
        self.texts = texts
        self.seq_len = int(seq_len)
        self.path = path

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> Mapping[str, np.ndarray]:
        ids = TOKENIZER.to_int(self.texts[int(i)])[: self.seq_len]
        tokens = np.full((self.seq_len,), TOKENIZER.pad_token, np.int32)
        tokens[: ids.size] = ids
        mask = np.zeros((self.seq_len,), np.int32)
        mask[: ids.size] = 1
        return {"tokens": tokens, "mask": mask, "label": self.labels[int(i)]}

    def __repr__(self) -> str:
        return (
            f"TextClassificationSource(path={self.path!r}, examples={len(self.texts)}, "
            f"classes={len(self.classes)}, seq_len={self.seq_len})"
        )


def span_mask(
    rng: np.random.Generator,
    length: int,
    *,
    mask_prob: float = 0.15,
    mean_span: float = 3.0,
    max_span: int = 10,
) -> np.ndarray:
    """A `[length]` bool mask covering about `mask_prob` of the positions in spans.

    Span lengths are geometric with mean `mean_span`, capped at `max_span`
    and at the remaining budget; spans start uniformly and may touch.
    Exactly `round(mask_prob * length)` positions are masked (at least one
    when `length` > 0 and `mask_prob` > 0).
    """
    mask = np.zeros((length,), bool)
    if length == 0 or mask_prob <= 0:
        return mask
    budget = min(length, max(1, int(round(mask_prob * length))))
    while True:
        remaining = budget - int(mask.sum())
        if remaining <= 0:
            return mask
        span = int(min(rng.geometric(1.0 / mean_span), max_span, remaining))
        start = int(rng.integers(0, length - span + 1))
        # Mask only fresh positions so the count is exact.
        window = mask[start : start + span]
        fresh = np.flatnonzero(~window)[:remaining]
        window[fresh] = True


def mask_tokens(
    tokens: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    *,
    mask_prob: float = 0.15,
    mean_span: float = 3.0,
    max_span: int = 10,
    replace_prob: Tuple[float, float] = (0.8, 0.1),
) -> Dict[str, np.ndarray]:
    """Masked-language-model inputs for one sequence.

    Spans of real tokens are chosen with `span_mask`; of the chosen tokens,
    `replace_prob[0]` become MASK, `replace_prob[1]` a random byte, and the
    rest stay (BERT's 80/10/10).

    Args:
      tokens: `[T]` token ids; mask: `[T]`, 1 for real tokens.

    Returns:
      `{'inputs': [T], 'input_mask': [T], 'targets': [T], 'weights': [T]}`:
      weights are 1 at the positions to predict.
    """
    tokens = np.asarray(tokens, np.int32)
    real = np.flatnonzero(np.asarray(mask) > 0)
    chosen = np.zeros(tokens.shape, bool)
    chosen[real] = span_mask(
        rng, real.size, mask_prob=mask_prob, mean_span=mean_span, max_span=max_span
    )
    u = rng.uniform(size=tokens.shape)
    inputs = tokens.copy()
    to_mask = chosen & (u < replace_prob[0])
    to_random = chosen & (u >= replace_prob[0]) & (u < replace_prob[0] + replace_prob[1])
    inputs[to_mask] = TOKENIZER.mask_token
    random_bytes = rng.integers(0, 256, tokens.shape).astype(np.int32) + 6
    inputs[to_random] = random_bytes[to_random]
    return {
        "inputs": inputs,
        "input_mask": np.asarray(mask, np.int32),
        "targets": tokens,
        "weights": chosen.astype(np.float32),
    }


class MaskTokens(grain.RandomMapTransform):
    """`mask_tokens` as a grain transform on `{'tokens', 'mask'}` records."""

    def __init__(self, mask_prob: float = 0.15, mean_span: float = 3.0, max_span: int = 10):
        self.mask_prob = mask_prob
        self.mean_span = mean_span
        self.max_span = max_span

    def random_map(self, element, rng: np.random.Generator):
        return mask_tokens(
            element["tokens"],
            element["mask"],
            rng,
            mask_prob=self.mask_prob,
            mean_span=self.mean_span,
            max_span=self.max_span,
        )


_TOPICS = {
    "sport": "ball goal team match player score coach league runner race".split(),
    "food": "bread soup spice onion garlic oven recipe pasta salt butter".split(),
    "space": "star planet orbit rocket moon comet galaxy telescope launch crater".split(),
}
_FILLER = "the a of and with near under over today again very quite then".split()


def generated_sentence(rng: np.random.Generator, topic: str, words: int = 12) -> str:
    """A sentence mixing filler words with words of one topic."""
    out = []
    for _ in range(words):
        vocab = _TOPICS[topic] if rng.uniform() < 0.5 else _FILLER
        out.append(vocab[int(rng.integers(len(vocab)))])
    return " ".join(out).capitalize() + "."


def write_generated_text(root: str, *, documents: int = 200, seed: int = 0) -> Dict[str, str]:
    """Writes a small corpus and a labelled set for the tiny text recipes.

    Returns:
      `{'corpus': txt file, 'train': jsonl, 'eval': jsonl}` paths; a label is
      the topic (sport, food, space) of the sentence's content words.
    """
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    topics = sorted(_TOPICS)
    paths = {
        "corpus": os.path.join(root, "corpus.txt"),
        "train": os.path.join(root, "train.jsonl"),
        "eval": os.path.join(root, "eval.jsonl"),
    }
    with open(paths["corpus"], "w") as f:
        for _ in range(documents):
            f.write(generated_sentence(rng, topics[int(rng.integers(3))]) + "\n")
    for split, count in (("train", documents), ("eval", documents // 4)):
        with open(paths[split], "w") as f:
            for _ in range(count):
                topic = topics[int(rng.integers(3))]
                f.write(json.dumps({"text": generated_sentence(rng, topic), "label": topic}) + "\n")
    return paths
