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

    from tokedit.io.scores_dir import MEAN_LOGPROB
    from tokedit.io.texts import DOCS_SHARD

    # the scores of the one shard write_dataset writes (scores mirror their shard's name)
    return pq.read_table(scores_dir / DOCS_SHARD, columns=[MEAN_LOGPROB]).column(0).to_pylist()


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


# --- ForTIFAI's metrics -------------------------------------------------------------------

KL_FLOOR = 1e-10  # ForTIFAI kl-divregence.ipynb, kl_divergence: zeros replaced by 1e-10


def kl_nats_with_floor(p_counts, q_counts, floor: float = KL_FLOOR) -> float:
    """ForTIFAI's ``kl_divergence(p, q)`` (``src/kl-divregence.ipynb``): both count vectors
    normalised, every zero entry then replaced by ``floor`` (no renormalisation), and
    ``sum p * ln(p / q)`` over the whole vocabulary, in nats."""
    p = np.asarray(p_counts, dtype=np.float64)
    q = np.asarray(q_counts, dtype=np.float64)
    p, q = p / p.sum(), q / q.sum()
    p = np.where(p == 0, floor, p)
    q = np.where(q == 0, floor, q)
    return float(np.sum(p * np.log(p / q)))


def unigram_counts(tokenizer, texts: list[str]) -> np.ndarray:
    """Token counts over the whole vocabulary (ForTIFAI's ``token_distribution`` bincount;
    tokens without special tokens, see docs/fidelity.md)."""
    from tokedit.training.trainer import tokenize_texts

    docs = tokenize_texts(tokenizer, texts)
    ids = np.concatenate(docs) if docs else np.zeros(0, np.int64)
    return np.bincount(ids, minlength=len(tokenizer)).astype(np.int64)


def make_knowledge_test(docs: list[str], vocabulary_texts: list[str], n_items: int, seed: int):
    """Knowledge-test items from documents the models train on (ForTIFAI's ``kt_dataset_*``
    items are facts of their training corpus): ``context`` is a sentence of a document,
    ``true`` the sentence that follows it there, ``false`` that sentence with one lower-case
    content word (>= 4 letters) replaced by another word of ``vocabulary_texts``. Each item
    records ``doc``, the index in ``docs`` it was taken from."""
    rng = np.random.default_rng(seed)
    vocab = sorted({m.group() for t in vocabulary_texts for m in _content_words(t)})
    candidates = []
    for d, text in enumerate(docs):
        sentences = [" ".join(s.split()) for s in SENTENCE_END.split(text)]
        for k in range(1, len(sentences)):
            ctx, s = sentences[k - 1], sentences[k]
            if len(ctx.split()) >= 3 and 4 <= len(s.split()) <= 40 and _content_words(s):
                candidates.append((d, ctx, s))
    items = []
    for i in rng.permutation(len(candidates)):
        if len(items) == n_items:
            break
        d, ctx, s = candidates[i]
        words = _content_words(s)
        m = words[rng.integers(len(words))]
        new = m.group()
        while new == m.group() and len(vocab) > 1:
            new = vocab[rng.integers(len(vocab))]
        false = s[: m.start()] + new + s[m.end() :]
        if false != s:
            items.append({"doc": int(d), "context": ctx, "true": s, "false": false})
    return items


def kt_span(n_context: int, n_true: int, n_false: int) -> tuple[int, int]:
    """ForTIFAI's answer span (``src/evaluate_utils.py``, ``question_answerer``): token
    positions ``[len(tokenize(context)), min(len(tokenize(context + " " + true)),
    len(tokenize(context + " " + false))))`` of each variant, the answer truncated to the
    shorter variant; the lengths given are of those token lists (no special tokens)."""
    return n_context, min(n_true, n_false)


def span_mean(logprobs, start: int, end: int) -> float:
    """Mean of ``logprobs[start:end]`` (``logprobs[j]``: log P of text token ``j``)."""
    span = np.asarray(logprobs[start:end], dtype=np.float64)
    return float(span.mean()) if len(span) else float("nan")


def kt_accuracy_of(scores) -> float:
    """Share of items whose true variant scores strictly higher (ForTIFAI's ``basic_stats``
    counts ``score_true - score_false > 0``; its 1,000 half-size resamples average to this)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1, 2)
    return float(np.mean(scores[:, 0] > scores[:, 1])) if len(scores) else float("nan")


def token_logprobs(model, tokenizer, texts: list[str]) -> list[np.ndarray]:
    """log P of every text token under ``model`` (``out[i][j]`` for token ``j`` of text ``i``,
    NaN for a first token that has no context). As ForTIFAI's ``to_tokens_and_logprobs``:
    the text is tokenized with the tokenizer's own special tokens (Gemma's BOS; none for the
    scratch tokenizers) and the special tokens' positions are then left out."""
    import torch

    special = set(tokenizer.all_special_ids)
    out = []
    model.eval()
    device = next(model.parameters()).device
    with torch.inference_mode():
        for ids in tokenizer(texts)["input_ids"]:
            x = torch.tensor([ids], device=device)
            lp = torch.log_softmax(model(input_ids=x).logits[0].float(), dim=-1)
            got = np.concatenate([[np.nan], lp[:-1].gather(1, x[0, 1:, None])[:, 0].cpu().numpy()])
            out.append(np.array([v for t, v in zip(ids, got, strict=True) if t not in special]))
    return out


def knowledge_test(model, tokenizer, items: list[dict]) -> dict:
    """Scores each item's true and false variant on ForTIFAI's answer span (:func:`kt_span`,
    :func:`span_mean`) and returns the accuracy and the per-item scores."""
    texts, spans = [], []
    for it in items:
        a, b = it["context"] + " " + it["true"], it["context"] + " " + it["false"]
        n = [
            len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in (it["context"], a, b)
        ]
        spans.append(kt_span(*n))
        texts += [a, b]
    lps = token_logprobs(model, tokenizer, texts)
    scores = [
        [span_mean(lps[2 * i], *spans[i]), span_mean(lps[2 * i + 1], *spans[i])]
        for i in range(len(items))
    ]
    return {"accuracy": kt_accuracy_of(scores), "scores": scores}


def time_to_failure(values, direction: str, line: float) -> int | None:
    """The first index (generation) whose value is above (``direction="above"``: ``>=``) or
    below (``"below"``: ``<=``) ``line``; None if none crosses it (not failed within the run)."""
    for g, v in enumerate(values):
        if v is None or not np.isfinite(v):
            continue
        if (direction == "above" and v >= line) or (direction == "below" and v <= line):
            return g
    return None
