"""tokedit's presets against an independent re-implementation of the authors' per-token loop.

The official loop (github Xuekai-Zhu/toedit, ``toedit_resampling.py``,
``online_resampling_json_up_revise`` and ``online_resampling_json_low_drop_up_revise``) is
written out again below from that file, not from tokedit's rule functions: for every
position of ``output.prompt_logprobs`` (vLLM dicts ``{token id: logprob}``: the actual token
first, then the top-k by rank),

    if prompt_logprob is None:            keep the token (the first one)
    prob = np.exp(log_prob_dict[actual])
    if prob > up_threshold (0.99):        token = np.random.choice(keys, p=softmax(values / beta))
    elif prob < low_threshold (0.001):    drop the token         (low_drop_up_revise only)
    else:                                 keep the token

with beta = 1.5 (up_revise) or 1 (low_drop_up_revise) and k = ``--n_of_candicant`` (8 by
default; 64 in the README's low_drop_up_revise command).

Both sides get the same candidates and, at each position, the same uniform number: the one
tokedit assigns to (seed, document id, position) in ``position_uniforms``. The official
draw is ``np.random.choice``: ``cdf = cumsum(p); cdf /= cdf[-1]; cdf.searchsorted(u, "right")``
(checked against ``np.random.choice`` itself below).

**Order mapping.** ``np.random.choice`` walks the dict in insertion order: the actual token,
then vLLM's rank order (``torch.topk``, whose order among exactly tied log-probs is not
specified). tokedit walks its canonical order, probability descending then token id. Above
0.99 the actual token is necessarily rank 1, so the two orders differ only among exact ties;
the dicts below list tied candidates in *descending* id order (a legal ``topk`` output), and
:func:`canonical` maps them explicitly to tokedit's order before the draw.

**Not compared here (documented in docs/fidelity.md).** The official code can draw special
tokens (it bans nothing; ``decode(skip_special_tokens=True)`` then drops them) while tokedit
never draws them: the candidates below hold no special token. The official output text is
``decode(final_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=True)``, which
also rewrites untouched text (" ." -> "."); tokedit splices bytes. Here the text is plain
ASCII with single spaces, so the decoded official tokens (without the clean-up) must equal
tokedit's spliced text exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from tokenizers import decoders

from tokedit.editor.batch import ScoreBatch, apply_draws, draw_batch
from tokedit.editor.rng import doc_key, position_uniforms
from tokedit.editor.rules import banned_mask, resolve_preset
from tokedit.editor.splice import Renderer
from tokedit.io.scores_dir import SCORES_SCHEMA
from tokedit.scoring.scorer import tokenize_documents
from tokedit.training.prior import train_tokenizer

WORDS = (
    "the king is dead and long live the queen who rules over all these lands with a firm "
    "hand while her lords plot in dark halls of stone my lord I will speak to him now"
).split()
SEED = 11


def official_softmax(x):
    e_x = np.exp(x - np.max(x))
    return e_x / e_x.sum(axis=0)


def official_choice(words, probs, u):
    """``np.random.choice(words, 1, p=probs)`` with its uniform number given."""
    cdf = np.cumsum(probs)
    cdf /= cdf[-1]
    return words[int(cdf.searchsorted(u, side="right"))], cdf


def canonical(prob_dict: dict[int, float]) -> dict[int, float]:
    """The dict's candidates in tokedit's order: probability descending, then token id."""
    return dict(sorted(prob_dict.items(), key=lambda kv: (-kv[1], kv[0])))


def official_loop(prompt_token_ids, prompt_logprobs, uniforms, strategy):
    """The per-token loop of toedit_resampling.py; returns one decision per position:
    ``("keep", id)``, ``("replace", id)`` or ``("delete", id)``, and the uniform margins."""
    up_threshold, low_threshold = 0.99, 0.001
    beta = {"up_revise": 1.5, "low_drop_up_revise": 1}[strategy]
    decisions, margins = [], []
    for i_index, prompt_logprob in enumerate(prompt_logprobs):
        actual = prompt_token_ids[i_index]
        if prompt_logprob is None:
            decisions.append(("keep", actual))
            continue
        log_prob_dict = dict(prompt_logprob)
        prob = np.exp(log_prob_dict[actual])
        if prob > up_threshold:
            ordered = canonical(log_prob_dict)  # the explicit order mapping (module docstring)
            words_candicate = list(ordered.keys())
            prob_scores = np.array(list(ordered.values()))
            adjusted_probs = official_softmax(prob_scores / beta)
            token, cdf = official_choice(words_candicate, adjusted_probs, uniforms[i_index])
            margins.append(float(np.min(np.abs(cdf - uniforms[i_index]))))
            decisions.append(("keep", actual) if token == actual else ("replace", token))
        elif strategy == "low_drop_up_revise" and prob < low_threshold:
            decisions.append(("delete", actual))
        else:
            decisions.append(("keep", actual))
    return decisions, margins


def test_official_choice_is_numpys_random_choice():
    """The inverse CDF above is what np.random.choice does with the legacy generator."""
    words = [7, 3, 9, 4]
    probs = official_softmax(np.log(np.array([0.9, 0.05, 0.03, 0.02])) / 1.5)
    for seed in range(200):
        expect = np.random.RandomState(seed).choice(words, 1, p=probs)[0]
        u = np.random.RandomState(seed).random_sample()
        assert official_choice(words, probs, u)[0] == expect


@pytest.fixture(scope="module")
def tok():
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, 60)) for _ in range(40)]
    return train_tokenizer(texts, vocab_size=400)


def whole_ascii_tokens(tok) -> np.ndarray:
    """Ids of non-special tokens whose text is whole printable ASCII (renderable anywhere)."""
    special = set(tok.all_special_ids)
    out = []
    for tid in range(len(tok)):
        text = decoders.ByteLevel().decode([tok.convert_ids_to_tokens(tid)])
        if tid not in special and text and text.isascii() and text.isprintable():
            out.append(tid)
    return np.array(out, dtype=np.int32)


# Log-probs at the float32 neighbours of the thresholds: exactly where a float32 ``log p``
# comparison and the official float64 ``np.exp(lp) > p`` can disagree.
def _neighbours(x: float, n: int = 3) -> list[float]:
    t = np.float32(x)
    out = [t]
    up = down = t
    for _ in range(n):
        up = np.nextafter(up, np.float32(np.inf))
        down = np.nextafter(down, np.float32(-np.inf))
        out += [up, down]
    return [float(v) for v in out]


EDGE_UP = _neighbours(math.log(0.99))
EDGE_LOW = _neighbours(math.log(0.001))


def make_case(tok, stored_k: int, n_docs: int = 100, seed: int = 0):
    """Documents, their scores table (tokedit's columns) and the official vLLM inputs.

    Per position the actual token's P is above 0.99 (35 %), below 0.001 (35 %), in between
    (rest) or at a float32 neighbour of a threshold. Candidates: ``stored_k`` distinct
    whole-ASCII tokens (the actual token first where P > 0.99), some with exactly tied
    log-probs. tokedit stores them where P >= 0.9 (as ``tokedit score --candidates-min-p
    0.9`` does); the official dict holds the top ``k`` plus the actual token.
    """
    rng = np.random.default_rng(seed)
    pool = whole_ascii_tokens(tok)
    texts = [" ".join(rng.choice(WORDS, int(rng.integers(40, 90)))) for _ in range(n_docs)]
    toks = tokenize_documents(tok, texts, add_bos=False)
    rows, official = [], []
    for d, t in enumerate(toks):
        with_bos = d % 2 == 1  # odd documents: scored with a BOS, so position 0 has a log-prob
        n = len(t.token_ids)
        lps, kids, klps, dicts = [], [], [], []
        for i, actual in enumerate(t.token_ids.tolist()):
            if i == 0 and not with_bos:
                lps.append(None)
                kids.append([])
                klps.append([])
                dicts.append(None)
                continue
            r = rng.random()
            if r < 0.04:
                lp_actual = float(rng.choice(EDGE_UP))
            elif r < 0.08:
                lp_actual = float(rng.choice(EDGE_LOW))
            elif r < 0.43:
                lp_actual = math.log(rng.uniform(0.99, 0.995))
            elif r < 0.78:
                lp_actual = math.log(rng.uniform(1e-6, 0.001))
            else:
                lp_actual = math.log(rng.uniform(0.001, 0.99))
            lp_actual = float(np.float32(lp_actual))  # vLLM and the scores hold float32
            p_actual = math.exp(lp_actual)
            others = rng.choice(pool[pool != actual], stored_k, replace=False)
            if p_actual > 0.5:  # the actual token is rank 1
                rest = rng.dirichlet(np.ones(stored_k - 1)) * (1 - p_actual) * 0.999
                if rng.random() < 0.3:  # an exact tie between two candidates
                    rest[1] = rest[2]
                cand = [actual, *others[: stored_k - 1].tolist()]
                cand_lp = [lp_actual, *np.log(rest).astype(np.float32).tolist()]
            else:  # the top-k are other tokens; the actual token may be outside them
                mass = rng.dirichlet(np.ones(stored_k)) * (1 - p_actual) * 0.999
                cand = others.tolist()
                cand_lp = np.log(mass).astype(np.float32).tolist()
            cand_lp = [float(v) for v in cand_lp]
            # vLLM's rank order: log-prob descending, exact ties in descending id order
            rank = sorted(zip(cand, cand_lp, strict=True), key=lambda c: (-c[1], -c[0]))
            lps.append(lp_actual)
            stored = p_actual >= 0.9
            # tokedit's stored order is "as given": take it shuffled, tokedit must not care
            shuffled = [rank[j] for j in rng.permutation(len(rank))]
            kids.append([c for c, _ in shuffled] if stored else [])
            klps.append([v for _, v in shuffled] if stored else [])
            dicts.append(rank)
        rows.append(
            {
                "id": f"doc{d}",
                "status": "ok",
                "token_ids": t.token_ids.tolist(),
                "offsets": t.starts.tolist(),
                "logprob": lps,
                "topk_ids": kids,
                "topk_logprobs": klps,
            }
        )
        official.append((with_bos, t.token_ids.tolist(), dicts, n))
    schema = pa.schema([SCORES_SCHEMA.field(c) for c in rows[0]])
    return texts, pa.Table.from_pylist(rows, schema=schema), official


def vllm_prompt_logprobs(actual: int, lp_actual: float, rank, k: int) -> dict[int, float]:
    """``SamplingParams(prompt_logprobs=k)``'s dict at one position: the actual token first,
    then the top k by rank (the actual token, if among them, keeps its first place)."""
    d = {actual: lp_actual}
    for c, v in rank[:k]:
        d.setdefault(c, v)
    return d


@pytest.mark.parametrize(
    "preset, strategy, stored_k",
    [("up-revise", "up_revise", 16), ("low-drop-up-revise", "low_drop_up_revise", 80)],
)
def test_tokedit_decides_and_draws_as_the_official_loop(tok, preset, strategy, stored_k):
    official_k = {"up_revise": 8, "low_drop_up_revise": 64}[strategy]  # --n_of_candicant
    texts, table, official = make_case(tok, stored_k)
    sb = ScoreBatch.from_table(table)

    # tokedit, as `tokedit edit --preset NAME` runs it
    p, rule, overridden = resolve_preset(preset)
    assert overridden == []
    keys = np.array([doc_key(SEED, i) for i in sb.ids], dtype=np.uint64)
    draws = draw_batch(sb, keys, p, rule, banned_mask(tok))
    edited = apply_draws(sb, texts, draws, p, Renderer(tok), drop_below=rule.drop_below)
    edits = edited.edits_lists()

    totals = {"keep": 0, "replace": 0, "delete": 0}
    edge_positions = 0
    all_margins = []
    for d, (with_bos, token_ids, dicts, n) in enumerate(official):
        # the official inputs: a BOS (no log-prob) before the text when scored with one
        lp = table.column("logprob")[d].as_py()
        prompt_ids = ([tok.bos_token_id] if with_bos else []) + token_ids
        prompt_lps = [None] if with_bos else []
        for i in range(n):
            if dicts[i] is None:
                prompt_lps.append(None)
            else:
                prompt_lps.append(vllm_prompt_logprobs(token_ids[i], lp[i], dicts[i], official_k))
        u = position_uniforms(np.full(n, keys[d]), np.arange(n))
        u = np.concatenate([[np.nan], u]) if with_bos else u  # the BOS is never drawn
        decisions, margins = official_loop(prompt_ids, prompt_lps, u, strategy)
        all_margins += margins
        decisions = decisions[1:] if with_bos else decisions

        # tokedit's decision at every position, from its provenance
        mine = [("keep", t) for t in token_ids]
        for e in edits[d]:
            assert e["orig_id"] == token_ids[e["pos"]]
            mine[e["pos"]] = ("delete", e["orig_id"]) if e["new_id"] == -1 else ("replace", e["new_id"])  # fmt: skip
        assert mine == decisions, f"doc{d}: " + str(
            next((i, a, b) for i, (a, b) in enumerate(zip(mine, decisions, strict=True)) if a != b)
        )
        for kind, _ in decisions:
            totals[kind] += 1
        edge_positions += sum(x is not None and x in EDGE_UP + EDGE_LOW for x in lp)

        # the official text (decode of the kept and drawn tokens) is tokedit's spliced text
        final = [t for (kind, t) in decisions if kind != "delete"]
        official_text = tok.decode(
            final, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        mine_text = edited.texts[d] if edited.texts[d] is not None else texts[d]
        assert mine_text == official_text

    c = edited.counts
    assert c["skipped"] == {"span": 0, "render": 0, "no_candidate": 0} and c["delete_skipped"] == 0
    assert (c["changed"], c["deleted"]) == (totals["replace"], totals["delete"])
    # the case exercises every branch, and no uniform lies on a CDF boundary
    assert totals["replace"] >= 10 and c["drawn_original"] >= 500
    assert edge_positions >= 50
    assert min(all_margins) > 1e-7
    if strategy == "low_drop_up_revise":
        assert totals["delete"] >= 300
    else:
        assert totals["delete"] == 0 and c["below"] == 0
