"""The ``vllm`` backend: prompt log-probs from vLLM on a CUDA GPU, as the ``hf`` backend's arrays.

Each window becomes one request: ``TokensPrompt(prompt_token_ids=<the window's ids>)`` with
``SamplingParams(max_tokens=1, prompt_logprobs=k, detokenize=False)``. vLLM answers, per
prompt position ``j``, ``None`` for ``j = 0`` (no context) and otherwise a dict
``token_id -> Logprob(logprob, rank, decoded_token)`` holding the ``k`` most likely tokens
plus the token actually at ``j`` (so ``k`` or ``k + 1`` entries). :func:`window_scores_from_prompt_logprobs`
turns that into the :class:`~tokedit.scoring.hf.WindowScores` the ``hf`` backend returns;
it is pure Python / numpy and tested without vLLM.

Settings and why (the pitfalls listed in DESIGN.md; see docs/gpus.md):

* ``max_logprobs = k + 1``: vLLM refuses requests asking for more than ``max_logprobs``
  (default 20), and the answer may hold ``k + 1`` entries.
* ``enable_chunked_prefill=False`` and ``max_num_batched_tokens >= max_model_len``: every
  prompt is computed in one step. Chunked prefill combined with ``prompt_logprobs`` and
  ``max_tokens=1`` has hung or been refused in some vLLM versions.
* ``max_num_batched_tokens = max(batch_tokens, max_model_len)`` and
  ``gpu_memory_utilization=0.80``: prompt log-probs need float32 ``[tokens, vocab]``
  logits that vLLM's memory profiling does not count; bounding the tokens per step bounds
  that tensor (``batch_tokens * vocab * 4`` bytes, twice) and 20 % of the GPU is left for it.
* ``enable_prefix_caching=False``: a cached prefix is not recomputed, so its positions would
  get no prompt log-probs.
* ``detokenize=False``: decoding every candidate to text is slow and tokedit needs ids only.
* ``dtype="bfloat16"`` unless ``--dtype`` says otherwise; vLLM computes prompt log-probs
  from the raw logits in float32 (its default ``logprobs_mode``), with no temperature.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tokedit.errors import InputError
from tokedit.scoring.hf import WindowScores
from tokedit.scoring.scorer import ScoreOptions
from tokedit.scoring.windows import Window

INSTALL_HINT = "pip install 'tokedit[vllm]' on a Linux machine with a CUDA GPU, or use --backend hf"
GPU_MEMORY_UTILIZATION = 0.80


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


def _rank_key(item: tuple[int, Any]) -> tuple:
    token_id, lp = item
    rank = getattr(lp, "rank", None)
    # vLLM ranks are 1-based vocabulary ranks; without them, order by log-prob (then id).
    return (rank if rank is not None else math.inf, -lp.logprob, token_id)


class VLLMBackend:
    """Score windows with a ``vllm.LLM`` (or any object with the same ``generate``)."""

    name = "vllm"

    def __init__(self, llm, make_params, *, dtype: str = "bfloat16", revision: str | None = None):
        self.llm = llm
        self._make_params = make_params  # top_k -> SamplingParams
        self.device = "cuda"
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
    ) -> VLLMBackend:
        """Start vLLM for ``model`` with the settings in this module's docstring."""
        try:
            import vllm
        except ImportError as e:
            raise InputError(
                f"--backend vllm needs vLLM, which cannot be imported here ({e})",
                remedy=INSTALL_HINT,
            ) from e
        import torch

        if not torch.cuda.is_available() or device == "cpu":
            raise InputError(
                "--backend vllm needs a CUDA GPU, and none is visible here",
                remedy="run on a GPU machine (check nvidia-smi and CUDA_VISIBLE_DEVICES), or use --backend hf",
            )
        if device not in ("auto", "cuda"):
            raise InputError(
                f"--backend vllm picks its GPU itself; --device {device} is not supported",
                remedy="leave --device out and select the GPU with CUDA_VISIBLE_DEVICES",
            )
        from tokedit.scoring.hf import model_positions

        max_len = options.max_len or 1024
        positions = model_positions(model, revision)
        if positions and max_len + 1 > positions:
            raise InputError(
                f"--backend vllm needs one position beyond the window for the token it generates; "
                f"--max-length {max_len} + 1 exceeds the model's {positions} positions",
                remedy=f"pass --max-length {positions - 1} or less",
            )
        vllm_dtype = "bfloat16" if dtype == "auto" else dtype
        llm = vllm.LLM(
            model=model,
            revision=revision,
            dtype=vllm_dtype,
            max_model_len=max_len + 1,  # the window plus the one token vLLM must generate
            max_logprobs=options.top_k + 1,
            max_num_batched_tokens=max(options.batch_tokens, max_len + 1),
            enable_chunked_prefill=False,
            enable_prefix_caching=False,
            gpu_memory_utilization=GPU_MEMORY_UTILIZATION,
            seed=0,
        )

        def make_params(top_k: int):
            return vllm.SamplingParams(
                max_tokens=1, prompt_logprobs=top_k, detokenize=False, temperature=0.0
            )

        return cls(llm, make_params, dtype=vllm_dtype, revision=revision)

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
            window_scores_from_prompt_logprobs(
                out.prompt_logprobs,
                prompt["prompt_token_ids"],
                w.score_from - w.start,
                top_k=top_k,
                min_p=min_p,
            )
            for w, prompt, out in zip(windows, prompts, outputs, strict=True)
        ]
