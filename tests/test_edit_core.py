"""Pure cores of the editor (no model, no files): random numbers, the sampling rule, token
text in context (byte-level and SentencePiece-style tokenizers), span alignment and the
byte-exact splice on non-ASCII text."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scale_helpers import assert_edits_byte_exact

from tokedit.editor.batch import ScoreBatch, apply_draws, draw_batch
from tokedit.editor.rng import doc_keys, position_uniforms
from tokedit.editor.rules import EditRule, banned_mask, draw
from tokedit.editor.splice import Renderer, align_span, splice
from tokedit.scoring.scorer import tokenize_documents
from tokedit.training.prior import train_tokenizer

MIXED = [
    "Café crème, naïve façade — déjà vu à Noël. Übermäßig schöne Straße!",
    "東京は日本の首都です。北京欢迎你，你好世界。한국어 문장도 있습니다.",
    "Emoji 🎉🎉 party 👩‍💻 coder, flags 🇫🇷🇯🇵 and ❤️ hearts; e\u0301 combining.",
    "Plain English text: the cat sat on the mat, and the dog sat on the log.\n  Indented line.",
    "Mixed: naïve 東京 🎉 text, the end. Русский текст и ελληνικά γράμματα.",
]


@pytest.fixture(scope="module")
def bytelevel():
    """GPT-2 style byte-level BPE with trimmed offsets, trained on a little mixed text."""
    return train_tokenizer(MIXED * 20, vocab_size=400)


@pytest.fixture(scope="module")
def metaspace():
    """A SentencePiece-style tokenizer (Metaspace "▁" pre-tokenizer and decoder, BPE)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "</s>", "<unk>"], show_progress=False
    )
    tok.train_from_iterator(MIXED * 20, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


# ----------------------------------------------------------------------------- rng


def test_uniforms_are_uniform_deterministic_and_keyed():
    keys = doc_keys(0, ["a", "b"])
    pos = np.arange(200_000)
    u = position_uniforms(np.repeat(keys[0], len(pos)), pos)
    assert u.min() >= 0 and u.max() < 1
    counts = np.bincount((u * 100).astype(int), minlength=100)
    chi2 = ((counts - 2000) ** 2 / 2000).sum()
    assert chi2 < 170  # chi-square, 99 dof: P(chi2 > 170) < 1e-5
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01  # neighbours uncorrelated
    again = position_uniforms(np.repeat(keys[0], 10), np.arange(10))
    np.testing.assert_array_equal(again, u[:10])  # same key and position, same number
    other = position_uniforms(np.repeat(keys[1], 10), np.arange(10))
    assert not np.allclose(other, u[:10])
    assert doc_keys(1, ["a"])[0] != keys[0]  # the seed changes every key


# ----------------------------------------------------------------------------- the rule


def _expected_probs(ids, lp, orig, rule, banned):
    """The rule written out directly for one row (independent of rules.py)."""
    cands = sorted(zip(lp, ids, strict=True), key=lambda t: (-t[0], t[1]))
    if rule.top_k:
        cands = cands[: rule.top_k]
    cands = [(v, i) for v, i in cands if not banned[i]]
    if rule.exclude_original:
        cands = [(v, i) for v, i in cands if i != orig]
    w = [math.exp(v / rule.temperature) for v, _ in cands]
    if rule.strategy == "topp":
        total, acc, kept = sum(w), 0.0, []
        for x in w:
            if acc < rule.top_p * total:
                kept.append(x)
            else:
                kept.append(0.0)
            acc += x
        w = kept
    s = sum(w)
    out = {}
    for (_, i), x in zip(cands, w, strict=True):
        out[i] = out.get(i, 0.0) + x / s
    return out


@pytest.mark.parametrize(
    "rule",
    [
        EditRule(),
        EditRule(temperature=0.5),
        EditRule(temperature=2.0, top_k=4),
        EditRule(strategy="topp", top_p=0.8),
        EditRule(exclude_original=True),
        EditRule(strategy="topp", top_p=0.5, exclude_original=True, temperature=1.5),
    ],
    ids=["topk", "T0.5", "T2-k4", "topp0.8", "exclude", "topp-exclude-T1.5"],
)
def test_draw_frequencies_match_the_rule(rule):
    ids = np.array([7, 3, 0, 9, 5, 11, 2, 8], dtype=np.int32)  # 0 is special (banned)
    lp = np.log(np.array([0.4, 0.2, 0.15, 0.1, 0.06, 0.04, 0.03, 0.02], dtype=np.float64))
    banned = np.zeros(16, bool)
    banned[0] = True
    orig = 7
    m = 60_000
    perm = np.random.default_rng(0).permuted(np.tile(np.arange(8), (m, 1)), axis=1)
    u = position_uniforms(np.repeat(doc_keys(3, ["x"])[0], m), np.arange(m))
    got = draw(
        ids[perm],
        lp[perm].astype(np.float32),
        np.ones((m, 8), bool),
        np.full(m, orig),
        u,
        rule,
        banned,
    )
    expected = _expected_probs(ids.tolist(), lp.tolist(), orig, rule, banned)
    expected = {i: q for i, q in expected.items() if q > 0}
    assert set(np.unique(got).tolist()) <= set(expected)  # never banned, excluded or cut off
    assert 0 not in got
    chi2 = sum((np.sum(got == i) - m * q) ** 2 / (m * q) for i, q in expected.items())
    dof = max(len(expected) - 1, 1)
    assert chi2 < dof + 6 * math.sqrt(2 * dof) + 10, (chi2, expected)


def test_candidate_order_does_not_change_the_draw():
    rng = np.random.default_rng(1)
    ids = np.array([rng.permutation(100)[:8] for _ in range(500)], dtype=np.int32)
    lp = np.log(rng.dirichlet(np.ones(8), size=500)).astype(np.float32)
    u = rng.random(500)
    banned = np.zeros(100, bool)
    perm = np.array([rng.permutation(8) for _ in range(500)])
    a = draw(ids, lp, np.ones_like(ids, bool), ids[:, 0], u, EditRule(), banned)
    b = draw(
        np.take_along_axis(ids, perm, 1),
        np.take_along_axis(lp, perm, 1),
        np.ones_like(ids, bool),
        ids[:, 0],
        u,
        EditRule(),
        banned,
    )
    np.testing.assert_array_equal(a, b)


def test_nothing_to_draw_gives_minus_one():
    ids = np.array([[4, 0, 1]], np.int32)
    lp = np.log(np.array([[0.98, 0.01, 0.01]], np.float32))
    banned = np.array([True, True, False, False, False])
    rule = EditRule(exclude_original=True)
    assert (
        draw(ids, lp, np.ones((1, 3), bool), np.array([4]), np.array([0.3]), rule, banned)[0] == -1
    )


def test_banned_mask_covers_specials_and_padded_head(bytelevel):
    banned = banned_mask(bytelevel, extra_size=len(bytelevel) + 5)
    assert banned[bytelevel.bos_token_id] and banned[bytelevel.pad_token_id]
    assert banned[len(bytelevel) :].all()
    assert banned.sum() == 3 + 5


# ----------------------------------------------------------------------------- rendering


def test_metaspace_tokens_keep_their_space_in_context(metaspace):
    r = Renderer(metaspace)
    world = metaspace.convert_tokens_to_ids("▁the")
    assert world != metaspace.unk_token_id
    assert metaspace.backend_tokenizer.decode([world]) == "the"  # the pitfall: alone, no space
    assert r.render(world) == " the"  # in context
    assert r.render(world, at_start=True) == "the"  # at the start of a document


def test_partial_bytes_never_render(bytelevel):
    r = Renderer(bytelevel)
    enc = bytelevel("🎉", add_special_tokens=False)["input_ids"]
    assert len(enc) > 1  # the emoji is split into byte tokens
    assert all(r.render(t) is None for t in enc)  # each is part of a character
    assert r.render(bytelevel.convert_tokens_to_ids("Ġthe")) == " the"
    assert r.render(10**6) is None


def test_align_span_moves_only_over_whitespace():
    text = "ter;\n  Prese"
    # trimmed offsets gave "Ġ" both spaces and "ĠP" only "P":
    assert align_span(text, 5, 7, " ") == (5, 6)
    assert align_span(text, 7, 8, " P") == (6, 8)
    assert align_span(text, 7, 8, "P") == (7, 8)
    assert align_span(text, 7, 8, "xP") is None  # not whitespace: not spliceable
    assert align_span(text, 8, 8, "") is None
    assert align_span(text, 3, 20, "r") is None


def test_splice_is_byte_exact():
    assert splice("héllo wörld", [1, 7], [2, 8], ["E", "O"]) == "hEllo wOrld"
    with pytest.raises(ValueError):
        splice("abc", [2, 1], [3, 2], ["x", "y"])


# ----------------------------------------------------------------------------- batches


def synthetic_batch(tokenizer, texts, cand_ids, seed=0, logprob=0.0):
    """A ScoreBatch with the tokenizer's real ids and offsets, every position at P=exp(logprob)
    and the given candidates (random permutations of ``cand_ids``) at every position."""
    toks = tokenize_documents(tokenizer, texts, add_bos=False)
    rng = np.random.default_rng(seed)
    rows = []
    for i, t in enumerate(toks):
        n = len(t.token_ids)
        k = len(cand_ids)
        cands = [rng.permutation(cand_ids).tolist() for _ in range(n)]
        lps = [np.log(np.full(k, 1.0 / k)).tolist() for _ in range(n)]
        rows.append(
            {
                "id": f"doc{i}",
                "status": "ok",
                "token_ids": t.token_ids.tolist(),
                "offsets": t.starts.tolist(),
                "logprob": [logprob] * n,
                "topk_ids": cands,
                "topk_logprobs": lps,
            }
        )
    from tokedit.io.scores_dir import SCORES_SCHEMA

    schema = pa.schema([SCORES_SCHEMA.field(c) for c in rows[0]])
    return ScoreBatch.from_table(pa.Table.from_pylist(rows, schema=schema))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(
            st.sampled_from(list("ab c\n.,éü東京🎉Ж") + ["👩‍💻", "e\u0301", "the", " the", "  "]),
            max_size=30,
        ).map("".join),
        min_size=1,
        max_size=4,
    ),
    st.integers(0, 10_000),
)
def test_every_position_edited_stays_byte_exact(bytelevel, texts, seed):
    texts = [t for t in texts if t] or ["x"]
    vocab = len(bytelevel)
    cand = np.random.default_rng(seed).choice(vocab, size=8, replace=False).astype(np.int32)
    sb = synthetic_batch(bytelevel, texts, cand, seed=seed)
    rule = EditRule(exclude_original=True)
    draws = draw_batch(sb, doc_keys(seed, sb.ids), 0.5, rule, banned_mask(bytelevel))
    out = apply_draws(sb, texts, draws, 0.5, Renderer(bytelevel))
    edits = out.edits_lists()
    for i, text in enumerate(texts):
        edited = out.texts[i] if out.texts[i] is not None else text
        assert_edits_byte_exact(bytelevel, text, edited, edits[i])
        assert out.n_above[i] == out.n_changed[i] + out.n_skipped[i]  # exclude-original
    c = out.counts
    assert c["changed"] + sum(c["skipped"].values()) + c["drawn_original"] == c["above"]


def test_multibyte_characters_are_skipped_not_corrupted(bytelevel):
    texts = ["東京 🎉 naïve", "👩‍💻🇫🇷"]
    # Candidates: partial-byte tokens of an emoji plus whole tokens.
    partial = bytelevel("🎉", add_special_tokens=False)["input_ids"]
    whole = [bytelevel.convert_tokens_to_ids(t) for t in ("Ġthe", "a", "Ġ")]
    sb = synthetic_batch(bytelevel, texts, np.array(partial + whole, np.int32))
    draws = draw_batch(
        sb,
        doc_keys(0, sb.ids),
        0.5,
        EditRule(exclude_original=True, top_k=0),
        banned_mask(bytelevel),
    )
    out = apply_draws(sb, texts, draws, 0.5, Renderer(bytelevel))
    assert out.counts["skipped"]["span"] > 0  # tokens inside a character: empty/partial spans
    assert out.counts["skipped"]["render"] > 0  # partial-byte replacements
    assert out.counts["changed"] > 0
    for i, text in enumerate(texts):
        edited = out.texts[i] if out.texts[i] is not None else text
        assert_edits_byte_exact(bytelevel, text, edited, out.edits_lists()[i])
        assert "\ufffd" not in edited


def test_metaspace_edits_keep_word_boundaries(metaspace):
    texts = ["the cat sat on the mat", "Café crème, naïve façade"]
    words = [metaspace.convert_tokens_to_ids(t) for t in ("▁the", "▁cat", "▁sat")]
    assert metaspace.unk_token_id not in words
    sb = synthetic_batch(metaspace, texts, np.array(words, np.int32))
    draws = draw_batch(
        sb, doc_keys(0, sb.ids), 0.5, EditRule(exclude_original=True), banned_mask(metaspace)
    )
    out = apply_draws(sb, texts, draws, 0.5, Renderer(metaspace))
    assert out.counts["changed"] >= 4
    for i, text in enumerate(texts):
        edited = out.texts[i] if out.texts[i] is not None else text
        assert_edits_byte_exact(metaspace, text, edited, out.edits_lists()[i], metaspace=True)
        shift = 0  # char_start/char_end are spans of the input; move them into the output
        for e in out.edits_lists()[i]:
            new = metaspace.convert_ids_to_tokens(e["new_id"]).replace("▁", " ")
            new = new[1:] if e["pos"] == 0 else new  # the start of a text has no space
            at = e["char_start"] + shift
            if e["pos"] > 0:  # a mid-document "▁word" keeps its space: words never glue
                assert edited[at : at + len(new)] == new and new.startswith(" ")
            shift += len(new) - (e["char_end"] - e["char_start"])
        assert "  " not in edited and not edited.startswith(" ")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(
            st.sampled_from(list("ab c\n\r.,éü東京🎉Ж\x00\ufeff") + ["e\u0301", "the", "  "]),
            max_size=30,
        ).map("".join),
        min_size=1,
        max_size=4,
    ),
    st.floats(0.05, 0.99),
    st.integers(0, 10_000),
)
def test_nothing_above_p_leaves_every_text_as_it_was(bytelevel, texts, p, seed):
    """Every position just under p (P = 0.9999 p): no edit, whatever the text, the
    candidates or the seed; the output is the input, byte for byte."""
    texts = [t for t in texts if t] or ["x"]
    cand = np.random.default_rng(seed).choice(len(bytelevel), size=8, replace=False)
    lp = math.log(p * 0.9999)
    sb = synthetic_batch(bytelevel, texts, cand.astype(np.int32), seed=seed, logprob=lp)
    rule = EditRule(exclude_original=True)
    draws = draw_batch(sb, doc_keys(seed, sb.ids), p, rule, banned_mask(bytelevel))
    out = apply_draws(sb, texts, draws, p, Renderer(bytelevel))
    assert out.counts["above"] == out.counts["changed"] == 0
    for i, text in enumerate(texts):
        assert (out.texts[i] if out.texts[i] is not None else text) == text
        assert out.edits_lists()[i] == [] and out.n_above[i] == 0
