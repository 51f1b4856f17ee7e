"""What the experiments measure: probability histograms, n-gram concentration and
divergences of a corpus, and the knowledge-retention probe."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tokedit.experiments.data import write_dataset
from tokedit.experiments.models import score
from tokedit.experiments.presets import ExperimentPreset


def probability_histogram(scores_dir: Path) -> dict:
    """The 10-bin histogram of ``P(token)`` over a scores directory (``ProbabilityAccumulator``)."""
    from tokedit.analysis.probs import accumulate_scores_dir

    s = accumulate_scores_dir(scores_dir).summary()
    return {"shares": s["hist10"]["shares"], "mean_logprob": s["mean_logprob"]}


def mean_logprobs(scores_dir: Path) -> list[float]:
    import pyarrow.parquet as pq

    return (
        pq.read_table(scores_dir / "docs.parquet", columns=["mean_logprob"]).column(0).to_pylist()
    )


def unigram_tables(tokenizer, texts: list[str], max_n: int = 2):
    from tokedit.analysis.ngrams import NgramCounterSet
    from tokedit.training.trainer import tokenize_texts

    docs = tokenize_texts(tokenizer, texts)
    counter = NgramCounterSet(id_limit=len(tokenizer), max_n=max_n)
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    counter.add(np.concatenate(docs).astype(np.uint64) if docs else np.zeros(0, np.uint64), lengths)
    return counter.finish()


def corpus_metrics(tokenizer, texts: list[str], reference) -> dict:
    """Unigram KL(real || texts) in bits (add-0.5 smoothing) and distinct-1 / distinct-2."""
    from tokedit.analysis.ngrams import compare, concentration

    tables = unigram_tables(tokenizer, texts)
    kl = compare(reference[1], tables[1], rare_max_count=2, alpha=0.5)["kl_ref_to_corpus"]
    return {
        "unigram_kl": kl,
        "distinct_1": concentration(tables[1])["distinct_ratio"],
        "distinct_2": concentration(tables[2])["distinct_ratio"],
    }


SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


WORD = re.compile(r"[A-Za-z]+")


def _content_words(sentence: str) -> list[re.Match]:
    return [m for m in WORD.finditer(sentence) if len(m.group()) >= 4 and m.group().islower()]


def make_probe(texts: list[str], vocabulary_texts: list[str], n_pairs: int, seed: int):
    """Pairs ``(true, corrupted)``: a real held-out sentence and the same sentence with one
    lower-case content word (>= 4 letters) replaced by a different word drawn uniformly from
    the content-word vocabulary of ``vocabulary_texts``. All other characters are kept."""
    rng = np.random.default_rng(seed)
    vocab = sorted({m.group() for t in vocabulary_texts for m in _content_words(t)})
    sentences = []
    for t in texts:
        for s in SENTENCE_END.split(t):
            s = " ".join(s.split())
            if 6 <= len(s.split()) <= 40 and _content_words(s):
                sentences.append(s)
    pairs = []
    for i in rng.permutation(len(sentences))[:n_pairs]:
        s = sentences[i]
        words = _content_words(s)
        m = words[rng.integers(len(words))]
        new = m.group()
        while new == m.group() and len(vocab) > 1:
            new = vocab[rng.integers(len(vocab))]
        corrupted = s[: m.start()] + new + s[m.end() :]
        if corrupted != s:
            pairs.append((s, corrupted))
    return pairs


def probe_accuracy(pairs, model_dir: Path, work: Path, preset: ExperimentPreset) -> float:
    """Share of pairs whose true sentence has the higher mean log-prob per token (scorer)."""
    data = write_dataset(work / "probe", [t for pair in pairs for t in pair])
    lp = mean_logprobs(score(data, work / "probe-scores", model_dir, preset))
    wins = [lp[2 * i] > lp[2 * i + 1] for i in range(len(pairs))]
    return float(np.mean(wins)) if wins else float("nan")
