"""Non-neural baselines for the token-classification and question-answering heads.

  python benchmarks/heads_baselines.py tokens   # byte-context logistic regression, stdlib tokens
  python benchmarks/heads_baselines.py qa       # lexical-overlap span picker, BBC QA set

`tokens`: each byte's BIO tag is predicted by a logistic regression
(scikit-learn) from the one-hot values of the byte and its `--context`
neighbours on each side (a value past the text's ends is its own category).
Data: `stdlib_token_spans` over the standard library's top-level modules of
5-40 kB, sorted by name: the first 20 train, the next 5 are held out. Scores:
entity precision/recall/F1 (`entity_scores`) of the spans `decode` reads
from the predicted tag probabilities.

`qa`: no learning. The context is split into word tokens (`\\w+` runs, with
`$`/`£` prefixes, `.`/`,` inside numbers and `%` suffixes kept). A candidate
answer is any run of 1 to `--max-words` consecutive tokens none of which
occurs in the question (case-folded). Its score is the number of context
tokens within `--window` tokens before and after the run that occur in the
question (stop words excluded); the highest score wins, the shorter run then
the earlier one on ties. The window is chosen on the training articles among
2, 4, 6 and 10; scores are SQuAD v1.1 EM/F1 on the held-out articles (every
fifth article of `bbc_articles()`).
"""

import argparse
import pathlib
import re
import sysconfig
import time

import numpy as np

from perceiver.datasets import squad as squad_data
from perceiver.datasets import token_spans as ts
from perceiver.evaluation.entities import entity_scores
from perceiver.evaluation.squad import squad_scores


def _features(text: str, context: int):
    """`[N, 2 * context + 1]` byte values around each byte, 256 past the ends."""
    data = np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)
    padded = np.concatenate([np.full(context, 256), data, np.full(context, 256)])
    return np.stack([padded[i:i + len(data)] for i in range(2 * context + 1)], axis=1)


def run_tokens(args) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import OneHotEncoder

    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in sorted(stdlib.glob("*.py")) if 5_000 <= p.stat().st_size <= 40_000]
    train_files, eval_files = files[:20], files[20:25]
    train = ts.stdlib_token_spans(train_files, args.max_chars)
    held_out = ts.stdlib_token_spans(eval_files, args.max_chars)
    tags = ts.bio_tags(ts.label_set(train))
    index = {name: i for i, name in enumerate(tags)}
    x = np.concatenate([_features(e.text, args.context) for e in train])
    y = np.concatenate([ts.encode(e.text, e.spans, index, len(e.text.encode("utf-8")))[1] for e in train])
    encoder = OneHotEncoder(categories=[np.arange(257)] * (2 * args.context + 1))
    start = time.perf_counter()
    model = LogisticRegression(max_iter=args.max_iter).fit(encoder.fit_transform(x), y)
    fit_s = time.perf_counter() - start
    true, pred = [], []
    for example in held_out:
        probs = np.zeros((len(example.text.encode("utf-8")), len(tags)))
        probs[:, model.classes_] = model.predict_proba(encoder.transform(_features(example.text, args.context)))
        pred.append(ts.decode(example.text, np.log(np.maximum(probs, 1e-12)), tags))
        true.append(example.spans)
    scores = entity_scores(true, pred)
    print(f"train files: {', '.join(p.name for p in train_files)}")
    print(f"held-out files: {', '.join(p.name for p in eval_files)}")
    print(f"train: {len(train)} texts, {len(y)} bytes; held out: {len(held_out)} texts, "
          f"{sum(len(e.spans) for e in held_out)} entities; context +-{args.context} bytes; fit {fit_s:.1f} s")
    print(f"entity micro P {scores['precision']:.4f}  R {scores['recall']:.4f}  F1 {scores['f1']:.4f}")
    for label, row in scores["per_label"].items():
        print(f"  {label:8s} P {row['precision']:.4f}  R {row['recall']:.4f}  F1 {row['f1']:.4f}  "
              f"support {row['support']}")


_WORD = re.compile(r"[$£]?\w+(?:[.,]\d+)*%?")
_STOP = frozenset("a an the of to in on at for and or but is was were be been are by with as that this it its "
                  "who what how much many year which said has had have from will would".split())


def _overlap_answer(question: str, context: str, window: int, max_words: int) -> str:
    """The lexical-overlap baseline's answer (see the module docstring)."""
    words = [(m.start(), m.end(), m.group().lower()) for m in _WORD.finditer(context)]
    asked = {w.lower() for w in _WORD.findall(question)}
    in_question = np.array([w[2] in asked for w in words], np.int64)
    matches = in_question * np.array([w[2] not in _STOP for w in words], np.int64)
    prefix = np.concatenate([[0], np.cumsum(matches)])
    free = np.concatenate([[0], np.cumsum(in_question)])
    best, best_key = "", None
    n = len(words)
    for length in range(1, max_words + 1):
        for s in range(n - length + 1):
            e = s + length  # run [s, e)
            if free[e] - free[s]:
                continue
            score = prefix[s] - prefix[max(s - window, 0)] + prefix[min(e + window, n)] - prefix[e]
            key = (score, -length, -s)
            if best_key is None or key > best_key:
                best_key, best = key, context[words[s][0]:words[e - 1][1]]
    return best


def _qa_scores(examples, window: int, max_words: int) -> dict:
    predictions = [_overlap_answer(e.question, e.context, window, max_words) for e in examples]
    return squad_scores(predictions, [[a.text for a in e.answers] for e in examples])


def run_qa(args) -> None:
    articles = squad_data.bbc_articles()
    held_out_articles = articles[::5]
    train_articles = [a for i, a in enumerate(articles) if i % 5]
    train = squad_data.qa_from_text(train_articles[::args.tune_every])
    held_out = squad_data.qa_from_text(held_out_articles)
    tuned = {w: _qa_scores(train, w, args.max_words) for w in (2, 4, 6, 10)}
    window = max(tuned, key=lambda w: tuned[w]["f1"])
    scores = _qa_scores(held_out, window, args.max_words)
    print(f"articles: {len(articles)}; held out every 5th: {len(held_out_articles)} articles, "
          f"{len(held_out)} questions; tuned on {len(train)} questions of training articles")
    for w, s in tuned.items():
        print(f"  tune window {w:2d}: EM {s['exact_match']:.2f}  F1 {s['f1']:.2f}")
    print(f"held out (window {window}, max {args.max_words} words): "
          f"EM {scores['exact_match']:.2f}  F1 {scores['f1']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    tokens = commands.add_parser("tokens", help="byte-context logistic regression on stdlib tokens")
    tokens.add_argument("--context", type=int, default=3, help="neighbour bytes on each side")
    tokens.add_argument("--max-chars", type=int, default=2048)
    tokens.add_argument("--max-iter", type=int, default=300)
    qa = commands.add_parser("qa", help="lexical-overlap span baseline on the BBC QA set")
    qa.add_argument("--max-words", type=int, default=4)
    qa.add_argument("--tune-every", type=int, default=4, help="tune on every n-th training article")
    args = parser.parse_args()
    {"tokens": run_tokens, "qa": run_qa}[args.command](args)


if __name__ == "__main__":
    main()
