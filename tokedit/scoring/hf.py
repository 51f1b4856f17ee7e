"""The ``hf`` backend: a ``transformers`` causal LM scoring windows with teacher forcing.

The model's decoder runs once per batch; the LM head and the log-softmax run only on the
positions being scored, a chunk of positions at a time and upcast to float32 there, so a
full float32 ``[tokens, vocab]`` log-softmax never exists at once (nor logits on padding).
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tokedit.errors import InputError
from tokedit.scoring.gguf import resolve_model
from tokedit.scoring.windows import Window

# Bytes of float32 logits computed at once: positions per chunk = this / (4 * vocab).
# 2,048 positions of a 262k vocabulary would be 2.1 GB before the log-softmax's temporaries;
# 64 MiB (64 positions of Gemma's 262k) keeps the peak near model size + 1 GB.
LOGIT_CHUNK_BYTES = 64 << 20


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def load_tokenizer(model: str, revision: str | None = None):
    """The fast tokenizer of ``model`` (loaded once per process: a 262k vocabulary takes
    seconds to parse, and every command loads it several times). Callers must not mutate it."""
    _check_model_path(model)
    path = resolve_model(model)
    return _load_tokenizer(path, revision, _tokenizer_stamp(path))


def _tokenizer_stamp(path: str) -> tuple:
    """Changes when a local tokenizer is rewritten, so the cache never serves a stale one."""
    files = [Path(path) / n for n in ("tokenizer.json", "tokenizer_config.json")]
    return tuple(f.stat().st_mtime_ns if f.is_file() else None for f in files)


@functools.lru_cache(maxsize=8)
def _load_tokenizer(model: str, revision: str | None, stamp: tuple):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model, revision=revision)
    except Exception as e:
        raise InputError(f"cannot load the tokenizer of {model!r}: {e}", remedy=_LOAD_REMEDY) from e
    if not getattr(tok, "is_fast", False):
        raise InputError(
            f"{model!r} has no fast tokenizer; tokedit needs character offsets",
            remedy="use a model with a tokenizer.json (a `tokenizers` fast tokenizer)",
        )
    return tok


_LOAD_REMEDY = "pass a local directory saved with save_pretrained, a .gguf file (e.g. from `tokedit prior fetch gemma-3-270m`), or a hub name on a machine that can reach the hub"


def _check_model_path(model: str) -> None:
    # Hub names are "name" or "org/name"; anything else that does not exist is a bad path.
    looks_local = model.startswith((".", "/", "~")) or model.count("/") > 1
    if looks_local and not Path(model).expanduser().exists():
        raise InputError(f"model path {model!r} does not exist", remedy=_LOAD_REMEDY)


def load_causal_lm(model: str, revision: str | None = None, **kwargs):
    """``AutoModelForCausalLM.from_pretrained`` of a directory, hub name or GGUF prior."""
    from transformers import AutoModelForCausalLM

    _check_model_path(model)
    try:
        return AutoModelForCausalLM.from_pretrained(
            resolve_model(model), revision=revision, **kwargs
        )
    except Exception as e:
        raise InputError(f"cannot load model {model!r}: {e}", remedy=_LOAD_REMEDY) from e


def _model_config(model: str, revision: str | None = None):
    from transformers import AutoConfig

    _check_model_path(model)
    try:
        return AutoConfig.from_pretrained(resolve_model(model), revision=revision)
    except Exception as e:
        raise InputError(f"cannot load the config of {model!r}: {e}", remedy=_LOAD_REMEDY) from e


def model_positions(model: str, revision: str | None = None) -> int | None:
    """The model's number of positions, read from its config (no weights loaded)."""
    return getattr(_model_config(model, revision), "max_position_embeddings", None)


def model_vocab_size(model: str, revision: str | None = None) -> int | None:
    """The size of the model's output vocabulary, read from its config (no weights loaded)."""
    config = _model_config(model, revision)
    config = getattr(config, "get_text_config", lambda: config)()
    return getattr(config, "vocab_size", None)


def tokenizer_hash(tokenizer) -> str:
    """sha256 of the tokenizer's full serialisation: same hash, same token ids and offsets."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


@dataclass
class WindowScores:
    """Scores of one window's scored positions ``score_from .. end-1``."""

    logprob: np.ndarray  # float32 [n]
    topk_ids: np.ndarray  # int32 [n, k]; rows where the actual token has P < min_p are unused
    topk_logprobs: np.ndarray  # float32 [n, k]
    has_topk: np.ndarray  # bool [n]


class HFBackend:
    name = "hf"

    def __init__(
        self, model: str, *, device: str = "auto", dtype: str = "auto", revision: str | None = None
    ):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        # The family's default attention (SDPA where the family supports it): forcing SDPA
        # makes some families (Gemma 2) refuse to load.
        self.model = load_causal_lm(model, revision, dtype=self.dtype)
        self.model.to(self.device).eval()
        self.decoder = self.model.get_decoder()
        self.head = LogitHead(self.model)
        check_head(self.model, self.head, model)
        self.revision = getattr(self.model.config, "_commit_hash", None) or revision

    @torch.inference_mode()
    def score_batch(
        self,
        seqs: list[np.ndarray],
        windows: list[Window],
        *,
        top_k: int,
        min_p: float,
        rows_above: float | None = None,
        on_rows=None,
    ) -> list[WindowScores]:
        """Score ``windows`` (one batch) of the documents ``seqs``; one result per window.

        ``on_rows(doc, position, target, logprob_rows)``: see :func:`score_positions`; here
        ``doc`` is the window's document index and ``position`` the index in its ``seq``.
        """
        longest = max(w.length for w in windows)
        ids = torch.zeros((len(windows), longest), dtype=torch.long)
        mask = torch.zeros((len(windows), longest), dtype=torch.long)
        for row, w in enumerate(windows):
            ids[row, : w.length] = torch.from_numpy(seqs[w.doc][w.start : w.end].astype(np.int64))
            mask[row, : w.length] = 1
        padded = bool((mask == 0).any())
        hidden = self.decoder(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device) if padded else None
        ).last_hidden_state

        # Position q of a window is predicted from the hidden state at q-1.
        rows, cols, targets, sizes = [], [], [], []
        for row, w in enumerate(windows):
            q = np.arange(w.score_from - w.start, w.length)
            rows.append(np.full(len(q), row))
            cols.append(q - 1)
            targets.append(seqs[w.doc][w.start + q])
            sizes.append(len(q))
        rows_t = torch.from_numpy(np.concatenate(rows)).to(self.device)
        cols_t = torch.from_numpy(np.concatenate(cols)).to(self.device)
        targets_t = torch.from_numpy(np.concatenate(targets).astype(np.int64)).to(self.device)
        h = hidden[rows_t, cols_t]
        located = None
        if on_rows is not None:
            flat = np.concatenate(targets)
            doc = np.concatenate([np.full(n, w.doc) for w, n in zip(windows, sizes, strict=True)])
            pos = np.concatenate([np.arange(w.score_from, w.end) for w in windows])

            def located(idx, lp_rows):
                on_rows(doc[idx], pos[idx], flat[idx], lp_rows)

        logprob, topk_ids, topk_lp, has_topk = score_positions(
            h,
            targets_t,
            self.head,
            top_k=top_k,
            min_p=min_p,
            rows_above=rows_above,
            on_rows=located,
        )
        out, at = [], 0
        for n in sizes:
            out.append(
                WindowScores(
                    logprob[at : at + n],
                    topk_ids[at : at + n],
                    topk_lp[at : at + n],
                    has_topk[at : at + n],
                )
            )
            at += n
        return out


def score_positions(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: torch.nn.Module,
    *,
    top_k: int,
    min_p: float,
    chunk: int | None = None,
    rows_above: float | None = None,
    on_rows=None,
):
    """Log-prob of each target and top-k candidates, computed ``chunk`` positions at a time.

    Returns numpy arrays: logprob [n] float32, topk ids [n, k] int32, topk log-probs [n, k]
    float32, and has_topk [n] bool (``P(target) >= min_p``; rows where it is False are zeros).

    ``on_rows(indices, logprob_rows)``, if given, is called once per chunk with the positions
    where ``P(target) > rows_above`` and their full float32 log-prob rows ``[m, vocab]`` (a
    tensor on the model's device). It lets the one-pass editor sample from the full
    distribution without a ``[n, vocab]`` array ever being kept.
    """
    n = hidden.shape[0]
    chunk = chunk or chunk_positions(head.vocab_size)
    log_min_p = math.log(min_p) if min_p > 0 else -math.inf
    logprob = np.empty(n, dtype=np.float32)
    topk_ids = np.zeros((n, top_k), dtype=np.int32)
    topk_lp = np.zeros((n, top_k), dtype=np.float32)
    has_topk = np.zeros(n, dtype=bool)
    for a in range(0, n, chunk):
        logits = head(hidden[a : a + chunk]).float()
        lse = torch.logsumexp(logits, dim=-1)
        lp = logits.gather(1, targets[a : a + chunk, None]).squeeze(1) - lse
        logprob[a : a + chunk] = lp.cpu().numpy()
        if on_rows is not None:
            sel = (lp > math.log(rows_above)).nonzero().squeeze(1)
            if len(sel):
                on_rows(sel.cpu().numpy() + a, logits[sel] - lse[sel, None])
        if top_k > 0:
            keep = lp >= log_min_p
            if keep.any():
                sel = keep.nonzero().squeeze(1)
                # Every row kept (the default --candidates-min-p 0): no copy of the chunk.
                rows = logits if len(sel) == len(logits) else logits[sel]
                values, idx = torch.topk(rows, top_k, dim=-1)
                sel_np = sel.cpu().numpy() + a
                topk_ids[sel_np] = idx.to(torch.int32).cpu().numpy()
                topk_lp[sel_np] = (values - lse[sel, None]).cpu().numpy()
                has_topk[sel_np] = True
    return logprob, topk_ids, topk_lp, has_topk


def chunk_positions(vocab_size: int, budget_bytes: int = LOGIT_CHUNK_BYTES) -> int:
    """Positions whose float32 logits fit in ``budget_bytes`` (at least 1)."""
    return max(1, budget_bytes // (4 * vocab_size))


class LogitHead(torch.nn.Module):
    """The model's LM head followed by what its family's ``forward`` does to the logits
    (Gemma 2/3 ``final_logit_softcapping``, Cohere ``logit_scale``, Granite
    ``logits_scaling``), returning float32 logits equal to ``model(ids).logits``."""

    def __init__(self, model):
        super().__init__()
        config = model.config
        self.linear = model.get_output_embeddings()
        self.vocab_size = int(self.linear.weight.shape[0])
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self.scale = getattr(config, "logit_scale", None)  # Cohere: logits * scale
        self.divide = getattr(config, "logits_scaling", None)  # Granite: logits / scaling

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.linear(hidden)
        if self.scale is not None:
            logits = logits * self.scale
        if self.divide is not None:
            logits = logits / self.divide
        logits = logits.float()
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


PROBE_IDS = 12


@torch.inference_mode()
def check_head(model, head: LogitHead, name: str) -> float:
    """Refuse a model whose ``forward`` logits are not ``head(decoder(ids))``: tokedit would
    store log-probs of another distribution. Returns the max difference on a short probe."""
    vocab = head.vocab_size
    ids = (torch.arange(PROBE_IDS, dtype=torch.long) * 7919 % max(vocab - 1, 1) + 1)[None]
    ids = ids.to(next(model.parameters()).device)
    expected = model(input_ids=ids).logits.float()
    got = head(model.get_decoder()(input_ids=ids).last_hidden_state)
    diff = float((expected - got).abs().max())
    scale = float(expected.abs().max()) or 1.0
    tolerance = 1e-4 if expected.dtype == torch.float32 and got.dtype == torch.float32 else 1e-2
    if not diff <= tolerance * max(1.0, scale):
        raise InputError(
            f"model {name!r} ({type(model).__name__}) post-processes its logits in a way "
            f"tokedit does not reproduce (max difference {diff:.3g} on a probe)",
            remedy="use a family tokedit supports (docs/priors.md: exact log-probs for every family) or report the model type",
        )
    return diff
