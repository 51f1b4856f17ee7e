"""The ``vllm`` backend without vLLM or a GPU: its conversion and its side of vLLM's contract.

vLLM itself runs only on GPU machines. Here the converter is fed exactly what vLLM returns
(``RequestOutput.prompt_logprobs``: a list, ``None`` at position 0, then per position a dict
``token_id -> Logprob(logprob, rank, decoded_token)`` with the top-k plus the actual token,
built the way vLLM builds it), computed from the real tiny prior, and must give the same
arrays as the ``hf`` backend.
"""

from __future__ import annotations

import math
import sys
import types
from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scale_helpers import invoke, write_custom_code_model

from tokedit.editor import EditOptions, edit_dataset
from tokedit.editor.rules import EditRule
from tokedit.errors import InputError
from tokedit.io.manifest import read_manifest
from tokedit.scoring.hf import HFBackend, load_tokenizer
from tokedit.scoring.options import ScoreOptions
from tokedit.scoring.run import score_dataset
from tokedit.scoring.scorer import tokenize_documents
from tokedit.scoring.vllm_backend import (
    CPU_KV_CACHE_BYTES,
    VLLMBackend,
    window_scores,
    window_scores_from_prompt_logprobs,
)
from tokedit.scoring.windows import plan_windows

# ---------------------------------------------------------------- vLLM's output structures


@dataclass
class Logprob:  # vllm.logprobs.Logprob
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:  # vllm.outputs.CompletionOutput (fields tokedit may meet)
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: list | None = None
    finish_reason: str | None = "length"


@dataclass
class RequestOutput:  # vllm.outputs.RequestOutput
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: list[dict[int, Logprob] | None] | None
    outputs: list[CompletionOutput]
    finished: bool = True


@dataclass
class SamplingParams:  # the vllm.SamplingParams fields tokedit sets
    max_tokens: int = 16
    prompt_logprobs: int | None = None
    detokenize: bool = True
    temperature: float = 1.0
    flat_logprobs: bool = False
    extra: dict = field(default_factory=dict)


def vllm_prompt_logprobs(
    rows: np.ndarray, prompt_ids: list[int], k: int
) -> list[dict[int, Logprob] | None]:
    """What vLLM returns for one prompt, from float32 log-prob rows (row j-1 predicts j).

    As in vLLM's ``LogprobsProcessor``: per position the token ids are [actual] + top-k,
    the ranks [rank of actual] + 1..k (rank = number of tokens at least as likely), and
    the dict is built in that order, so a top-k entry overwrites the actual token's.
    """
    ids = np.asarray(prompt_ids[1:], np.int64)
    rows = rows[: len(ids)]
    actual_lp = rows[np.arange(len(ids)), ids]
    ranks = (rows >= actual_lp[:, None]).sum(1)
    top = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    out: list[dict[int, Logprob] | None] = [None]
    for row, actual, rank, t in zip(rows, ids.tolist(), ranks.tolist(), top, strict=True):
        entries = [actual, *t.tolist()]
        out.append(
            {
                tid: Logprob(float(row[tid]), r, None)
                for tid, r in zip(entries, [rank, *range(1, k + 1)], strict=True)
            }
        )
    return out


class FakeLLM:
    """Answers ``generate`` like ``vllm.LLM`` would, with the real tiny prior on the CPU."""

    def __init__(self, model):
        self.model = model
        self.calls: list[tuple[list, SamplingParams]] = []

    @torch.inference_mode()
    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append((prompts, params))
        assert params.max_tokens == 1 and params.detokenize is False
        # one forward per prompt length (windows mostly share one): a causal LM's rows do not
        # depend on the other sequences of the batch
        by_len: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            by_len.setdefault(len(p["prompt_token_ids"]), []).append(i)
        outs = [None] * len(prompts)
        for group in by_len.values():
            batch = torch.tensor([list(prompts[i]["prompt_token_ids"]) for i in group])
            logits = self.model(input_ids=batch).logits.float()
            for i, rows in zip(group, torch.log_softmax(logits, dim=-1).numpy(), strict=True):
                ids = list(prompts[i]["prompt_token_ids"])
                outs[i] = RequestOutput(
                    str(i),
                    None,
                    ids,
                    vllm_prompt_logprobs(rows[:-1], ids, params.prompt_logprobs),
                    [CompletionOutput(0, "", [int(rows[-1].argmax())])],
                )
        return outs


def fake_backend(model) -> VLLMBackend:
    return VLLMBackend(
        FakeLLM(model),
        lambda k: SamplingParams(max_tokens=1, prompt_logprobs=k, detokenize=False),
    )


@pytest.fixture(scope="module")
def hf(tiny_prior):
    return HFBackend(str(tiny_prior), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def doc_seqs(tiny_prior, plays):
    tok = load_tokenizer(str(tiny_prior))
    texts = [
        plays["hamlet"][:1200],
        "x",
        "Ça fait déjà 3 € — 東京 🎭 naïve",
        plays["tempest"][:500],
    ]
    return [t.seq for t in tokenize_documents(tok, texts, add_bos=True)]


# ---------------------------------------------------------------- conversion


@pytest.mark.parametrize("top_k,min_p", [(8, 0.05), (3, 0.5), (0, 0.9)])
def test_vllm_conversion_equals_hf_backend(hf, doc_seqs, top_k, min_p):
    windows = [w for d, seq in enumerate(doc_seqs) for w in plan_windows(len(seq), 64, 16, doc=d)]
    want = hf.score_batch(doc_seqs, windows, top_k=top_k, min_p=min_p)
    got = fake_backend(hf.model).score_batch(doc_seqs, windows, top_k=top_k, min_p=min_p)
    assert len(got) == len(want) == len(windows)
    for w, a, b in zip(windows, got, want, strict=True):
        assert a.logprob.dtype == np.float32 and a.logprob.shape == (w.end - w.score_from,)
        np.testing.assert_allclose(a.logprob, b.logprob, atol=1e-5)
        np.testing.assert_array_equal(a.has_topk, b.has_topk)
        assert a.topk_ids.shape == b.topk_ids.shape == (len(a.logprob), top_k)
        np.testing.assert_array_equal(a.topk_ids, b.topk_ids)
        np.testing.assert_allclose(a.topk_logprobs, b.topk_logprobs, atol=1e-5)


def test_vllm_requests_follow_the_documented_settings(hf, doc_seqs):
    backend = fake_backend(hf.model)
    windows = plan_windows(len(doc_seqs[0]), 64, 16)
    backend.score_batch(doc_seqs, windows, top_k=5, min_p=0.1)
    [(prompts, params)] = backend.llm.calls
    assert params.prompt_logprobs == 5 and params.max_tokens == 1 and not params.detokenize
    assert [p["prompt_token_ids"] for p in prompts] == [
        doc_seqs[0][w.start : w.end].tolist() for w in windows
    ]


def test_score_dataset_with_vllm_backend_matches_hf(tmp_path, tiny_prior, hf, plays, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(
        __import__("pyarrow").Table.from_pylist(
            [{"text": plays["macbeth"][:4000]}, {"text": ""}, {"text": "Fair is foul"}]
        ),
        data / "a.parquet",
    )
    monkeypatch.setattr(
        VLLMBackend, "load", classmethod(lambda cls, *a, **k: fake_backend(hf.model))
    )
    opts = ScoreOptions(max_length=96, overlap=24, candidates_min_p=0.1)
    tables = {}
    for backend in ("hf", "vllm"):
        score_dataset(
            str(data), str(tmp_path / backend), model=str(tiny_prior), options=opts,
            backend=backend, device="cpu", progress=False,
        )  # fmt: skip
        tables[backend] = pq.read_table(tmp_path / backend / "a.parquet").to_pydict()
    a, b = tables["vllm"], tables["hf"]
    for col in ("id", "status", "n_tokens", "token_ids", "offsets"):
        assert a[col] == b[col]
    for x, y in zip(a["logprob"], b["logprob"], strict=True):
        np.testing.assert_allclose(np.array(x, float), np.array(y, float), atol=1e-5)
    assert a["topk_ids"] == b["topk_ids"]


# ---------------------------------------------------------------- one-pass edit


def test_one_pass_edit_with_vllm_backend(tmp_path, tiny_prior, hf, plays, monkeypatch):
    """``edit --model --backend vllm`` draws from vLLM's top-k candidates: the same bytes as
    scoring with vLLM and editing from those scores, and as one-pass ``hf`` with that top-k."""
    import pyarrow as pa

    data = tmp_path / "data"
    data.mkdir()
    rows = [{"text": plays[name][:1500]} for name in ("macbeth", "hamlet", "tempest")]
    pq.write_table(pa.Table.from_pylist([*rows, {"text": ""}, {"text": None}]), data / "a.parquet")
    monkeypatch.setattr(
        VLLMBackend, "load", classmethod(lambda cls, *a, **k: fake_backend(hf.model))
    )
    rule, ps = EditRule(top_k=8), (0.3, 0.6)
    window = dict(max_length=96, overlap=24)
    out = {}
    for backend in ("vllm", "hf"):
        out[backend] = tmp_path / f"one-pass-{backend}"
        summary = edit_dataset(
            str(data), str(out[backend]), model=str(tiny_prior),
            options=EditOptions(ps=ps, rule=rule), progress=False,
            **window, device="cpu", backend=backend,
        )  # fmt: skip
        assert summary.totals["0.3"].changed > 0
    score_dataset(
        str(data), str(tmp_path / "scores"), model=str(tiny_prior), backend="vllm",
        options=ScoreOptions(**window, top_k=8, candidates_min_p=0.3), progress=False,
    )  # fmt: skip
    edit_dataset(
        str(data), str(tmp_path / "two-pass"), scores_dir=str(tmp_path / "scores"),
        options=EditOptions(ps=ps, rule=rule), progress=False,
    )  # fmt: skip
    for rel in ("p=0.3/a.parquet", "p=0.6/a.parquet"):
        one_pass = (out["vllm"] / rel).read_bytes()
        assert one_pass == (tmp_path / "two-pass" / rel).read_bytes()
        assert one_pass == (out["hf"] / rel).read_bytes()
    manifest = read_manifest(out["vllm"])
    assert manifest["options"]["backend"] == "vllm"


def test_vllm_one_pass_edit_refuses_the_full_distribution(tmp_path, tiny_prior):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text('{"text": "To be"}\n')
    args = ("edit", str(data), "--model", str(tiny_prior), "--out", str(tmp_path / "o"),
            "--backend", "vllm", "-q")  # fmt: skip
    r = invoke(*args, "--top-k", "0")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--top-k 0 (the full distribution) cannot be drawn with --backend vllm" in r.stderr
    assert "fix: pass a --top-k above 0 (e.g. --top-k 8), or use --backend hf" in r.stderr
    r = invoke("edit", str(data), "--scores", str(tmp_path), "--out", str(tmp_path / "o"),
               "--backend", "vllm", "-q")  # fmt: skip
    assert r.returncode == 2 and "with --scores nothing is scored" in r.stderr


def random_prompt(vocab: int, n: int, seed: int):
    """A generator, the log-softmax rows of ``n`` random positions, and ``n + 1`` prompt ids."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, vocab)).astype(np.float32)
    rows = (logits - np.log(np.exp(logits).sum(1, keepdims=True))).astype(np.float32)
    return rng, rows, rng.integers(0, vocab, n + 1).tolist()


# the examples of both conversion properties: vocabulary, positions, top k, min-p, seed
conversion_examples = given(
    vocab=st.integers(2, 40),
    n=st.integers(2, 30),
    k=st.integers(0, 6),
    min_p=st.floats(1e-4, 1.0),
    seed=st.integers(0, 2**31),
)


@settings(max_examples=60, deadline=None)
@conversion_examples
def test_conversion_properties(vocab, n, k, min_p, seed):
    k = min(k, vocab)
    rng, rows, ids = random_prompt(vocab, n, seed)
    plp = vllm_prompt_logprobs(rows, ids, k)
    score_from = int(rng.integers(1, n + 1))
    ws = window_scores_from_prompt_logprobs(plp, ids, score_from, top_k=k, min_p=min_p)
    positions = range(score_from, n + 1)
    want_lp = np.array([rows[j - 1, ids[j]] for j in positions], np.float32)
    np.testing.assert_array_equal(ws.logprob, want_lp)
    want_has = want_lp >= np.float32(math.log(min_p)) if k else np.zeros(len(want_lp), bool)
    np.testing.assert_array_equal(ws.has_topk, want_has)
    for i, j in enumerate(positions):
        if want_has[i]:
            top = np.argsort(-rows[j - 1], kind="stable")[:k]
            assert ws.topk_ids[i].tolist() == top.tolist()
            np.testing.assert_array_equal(ws.topk_logprobs[i], rows[j - 1, top])
        else:
            assert not ws.topk_ids[i].any() and not ws.topk_logprobs[i].any()


def test_conversion_without_ranks_orders_by_logprob():
    plp = [None, {7: Logprob(-0.1), 3: Logprob(-3.0), 5: Logprob(-1.0)}]
    ws = window_scores_from_prompt_logprobs(plp, [1, 7], 1, top_k=2, min_p=0.5)
    assert ws.topk_ids.tolist() == [[7, 5]] and ws.has_topk.tolist() == [True]


@pytest.mark.parametrize(
    "plp,ids,message",
    [
        ([None, {4: Logprob(-1.0, 1)}], [1, 2], "no log-prob for prompt position 1"),
        ([None, None], [1, 2], "no log-prob for prompt position 1"),
        ([None], [1, 2], "1 prompt positions for a prompt of 2 tokens"),
        ([None, {2: Logprob(-0.1, 1)}], [1, 2], "1 candidates at prompt position 1, expected 3"),
    ],
)
def test_conversion_refuses_malformed_answers(plp, ids, message):
    with pytest.raises(ValueError, match=message):
        window_scores_from_prompt_logprobs(plp, ids, 1, top_k=3, min_p=0.01)


# ---------------------------------------------------------------- loading


def test_missing_vllm_is_a_clear_cli_error(tmp_path, tiny_prior, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` fails, as where it is absent
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text('{"text": "To be"}\n')
    r = invoke("score", str(data), "--model", str(tiny_prior), "--out", str(tmp_path / "o"),
               "--backend", "vllm", "-q")  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--backend vllm needs vLLM, which cannot be imported here" in r.stderr
    assert "pip install 'tokedit[vllm]'" in r.stderr


@pytest.fixture
def fake_vllm_module(monkeypatch):
    """A stand-in ``vllm`` module that records how tokedit constructs LLM and SamplingParams."""
    mod = types.ModuleType("vllm")
    mod.created = {}

    class LLM:
        def __init__(self, **kwargs):
            mod.created["llm"] = kwargs

    def sampling_params(**kwargs):
        mod.created["params"] = kwargs
        return SamplingParams(**kwargs)

    mod.LLM, mod.SamplingParams = LLM, sampling_params
    monkeypatch.setitem(sys.modules, "vllm", mod)
    # the stand-in has no platforms package: a real vLLM imported earlier in this process
    # (tests/test_vllm_real.py) must not answer for it
    monkeypatch.setitem(sys.modules, "vllm.platforms", None)
    return mod


def test_vllm_engine_settings_against_known_pitfalls(fake_vllm_module, monkeypatch, tiny_prior):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    opts = ScoreOptions(max_length=100, overlap=10, top_k=8, batch_tokens=4096)
    backend = VLLMBackend.load(str(tiny_prior), options=opts)
    llm = fake_vllm_module.created["llm"]
    assert llm["max_logprobs"] >= 8 + 1  # vLLM refuses prompt_logprobs > max_logprobs
    assert llm["enable_chunked_prefill"] is False
    assert llm["enable_prefix_caching"] is False
    assert llm["max_model_len"] == 101  # the window plus the generated token
    assert llm["max_num_batched_tokens"] >= llm["max_model_len"]
    assert llm["dtype"] == "bfloat16" and llm["gpu_memory_utilization"] <= 0.85
    assert llm["trust_remote_code"] is False  # given, never left to vLLM's default
    backend._make_params(8)
    assert fake_vllm_module.created["params"] == {
        "max_tokens": 1,
        "prompt_logprobs": 8,
        "detokenize": False,
        "temperature": 0.0,
        "flat_logprobs": True,
    }


def test_vllm_runs_a_models_own_code_only_when_trusted(
    fake_vllm_module, monkeypatch, tmp_path, tiny_prior
):
    """A model that ships its own code (an auto_map): refused before vLLM starts, none of its
    code run, unless trusted; trusted, its code runs and vLLM is told to trust it too."""
    import transformers.dynamic_module_utils as dmu

    from tokedit.scoring.options import ModelOptions
    from tokedit.scoring.run import load_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dmu, "HF_MODULES_CACHE", str(tmp_path / "hf-modules"))
    marker = tmp_path / "code-ran"
    model = str(write_custom_code_model(tiny_prior, tmp_path / "custom-vllm", marker))
    opts = ScoreOptions(max_length=64, top_k=8)
    with pytest.raises(InputError, match="ships its own Python code") as e:
        load_backend(model, ModelOptions(backend="vllm"), opts)
    assert "trust_remote_code=True" in str(e.value) and model in str(e.value)
    assert "llm" not in fake_vllm_module.created and not marker.exists()
    load_backend(model, ModelOptions(backend="vllm", trust_remote_code=True), opts)
    assert fake_vllm_module.created["llm"]["trust_remote_code"] is True
    assert "configuration_custom" in marker.read_text().split()


def test_vllm_cpu_build_gets_a_fixed_kv_cache(fake_vllm_module, monkeypatch, tiny_prior):
    """vLLM's CPU build would otherwise reserve a share of the RAM (its default 0.92)."""
    monkeypatch.setattr("tokedit.scoring.vllm_backend.is_cpu_build", lambda: True)
    backend = VLLMBackend.load(str(tiny_prior), options=ScoreOptions(max_length=64, top_k=8))
    llm = fake_vllm_module.created["llm"]
    assert llm["kv_cache_memory_bytes"] == CPU_KV_CACHE_BYTES and llm["enforce_eager"] is True
    assert "gpu_memory_utilization" not in llm
    assert llm["dtype"] == "float32" and backend.device == "cpu"


def test_vllm_refuses_a_top_k_above_the_vocabulary(fake_vllm_module, monkeypatch, tiny_prior):
    from tokedit.scoring.hf import model_vocab_size

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    vocab = model_vocab_size(str(tiny_prior))
    VLLMBackend.load(str(tiny_prior), options=ScoreOptions(max_length=64, top_k=vocab))
    assert fake_vllm_module.created["llm"]["max_logprobs"] == vocab + 1
    with pytest.raises(InputError, match=f"^top_k={vocab + 1}: .* {vocab} tokens") as e:
        VLLMBackend.load(str(tiny_prior), options=ScoreOptions(max_length=64, top_k=vocab + 1))
    assert str(e.value).endswith(f"\n  fix: pass top_k={vocab} or less")


def test_vllm_refuses_windows_without_room_for_the_generated_token(
    fake_vllm_module, monkeypatch, tiny_prior
):
    from tokedit.scoring.hf import model_positions

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    positions = model_positions(str(tiny_prior))
    with pytest.raises(InputError, match=f"pass max_length={positions - 1} or less"):
        VLLMBackend.load(str(tiny_prior), options=ScoreOptions(max_length=positions, overlap=8))


def test_vllm_without_gpu_says_so(fake_vllm_module, monkeypatch, tiny_prior):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="needs a CUDA GPU"):
        VLLMBackend.load(str(tiny_prior), options=ScoreOptions(max_length=64, overlap=8))


# ---------------------------------------------------------------- vLLM's flat answer


@dataclass
class FlatLogprobs:  # vllm.logprobs.FlatLogprobs: the lists, without the per-position views
    start_indices: list[int] = field(default_factory=list)
    end_indices: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    ranks: list[int | None] = field(default_factory=list)

    def append(self, ids, lps, ranks):
        self.start_indices.append(len(self.logprobs))
        self.token_ids += ids
        self.logprobs += lps
        self.ranks += ranks
        self.end_indices.append(len(self.logprobs))

    def __len__(self):
        return len(self.start_indices)

    def __getitem__(self, j):  # vLLM builds a dict of Logprob objects here: never needed
        raise AssertionError("the flat converter read a position as a dict")

    __iter__ = __getitem__


def vllm_flat_logprobs(rows: np.ndarray, prompt_ids: list[int], k: int) -> FlatLogprobs:
    """What vLLM returns with ``flat_logprobs=True``: per position [actual] + top-k, unmerged
    (``append_logprobs_for_next_position`` -> ``FlatLogprobs.append_fast``)."""
    flat = FlatLogprobs()
    flat.append([], [], [])  # position 0: no context
    for j in range(1, len(prompt_ids)):
        row, actual = rows[j - 1], int(prompt_ids[j])
        top = np.argsort(-row, kind="stable")[:k]
        flat.append(
            [actual, *map(int, top)],
            [float(row[actual]), *map(float, row[top])],
            [int((row >= row[actual]).sum()), *range(1, k + 1)],
        )
    return flat


@settings(max_examples=60, deadline=None)
@conversion_examples
def test_flat_conversion_equals_dict_conversion(vocab, n, k, min_p, seed):
    """The numpy reading of vLLM's flat lists gives the arrays of the dict reading, whatever
    the actual token's rank (inside or outside the top k: the extra entry never is a candidate)."""
    k = min(k, vocab)
    rng, rows, ids = random_prompt(vocab, n, seed)
    score_from = int(rng.integers(1, n + 1))
    want = window_scores_from_prompt_logprobs(
        vllm_prompt_logprobs(rows, ids, k), ids, score_from, top_k=k, min_p=min_p
    )
    got = window_scores(vllm_flat_logprobs(rows, ids, k), ids, score_from, top_k=k, min_p=min_p)
    for name in ("logprob", "topk_ids", "topk_logprobs", "has_topk"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda f: f.end_indices.__setitem__(2, f.end_indices[2] - 1),
            "2 entries at prompt position 2, expected 3",
        ),
        (
            lambda f: f.token_ids.__setitem__(f.start_indices[1], 99),
            "no log-prob for prompt position 1",
        ),
        (lambda f: f.start_indices.pop(), "2 prompt positions for a prompt of 3 tokens"),
    ],
)
def test_flat_conversion_refuses_malformed_answers(edit, message):
    rows = np.log(np.full((2, 5), 0.2, np.float32))
    flat = vllm_flat_logprobs(rows, [1, 2, 3], 2)
    edit(flat)
    with pytest.raises(ValueError, match=message):
        window_scores(flat, [1, 2, 3], 1, top_k=2, min_p=0.0)
