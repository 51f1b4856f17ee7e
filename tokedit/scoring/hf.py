"""The ``hf`` backend: a ``transformers`` causal LM scoring windows with teacher forcing.

The model's decoder runs once per batch; the LM head and the log-softmax run only on the
positions being scored, a chunk of positions at a time and upcast to float32 there, so a
full float32 ``[tokens, vocab]`` log-softmax never exists at once (nor logits on padding).
"""

from __future__ import annotations

import functools
import hashlib
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tokedit.errors import InputError, arg
from tokedit.scoring.gguf import resolve_model
from tokedit.scoring.windows import Window, batch_layout

# LM-head chunks: how many positions' logits exist at once (see chunk_positions).
# CPU: a byte budget of float32 logits. 64 MiB (64 positions of Gemma's 262k vocabulary)
# keeps the peak near model size + 1 GB; larger chunks measure no faster on CPU.
CPU_LOGIT_CHUNK_BYTES = 64 << 20
# CUDA: the share of the device's free memory (measured after the model is loaded) that one
# chunk's logits and their temporaries may take; the rest is headroom for the next batch's
# activations and the allocator. Per position a chunk holds the head's output in the model
# dtype, the float32 logits, the exp temporary of logsumexp and top-k's scratch: budgeted
# as three float32 rows of the vocabulary.
CUDA_FREE_SHARE = 0.25
CUDA_BYTES_PER_LOGIT = 12
# Beyond a few thousand positions a chunk's matmul is as efficient as it gets.
MAX_CHUNK_POSITIONS = 8192


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def load_tokenizer(model: str, revision: str | None = None, *, trust_remote_code: bool = False):
    """The fast tokenizer of ``model`` (loaded once per process: a 262k vocabulary takes
    seconds to parse, and every command loads it several times). Callers must not mutate it.
    ``trust_remote_code``: whether a tokenizer class the model ships as code may run."""
    _check_model_path(model)
    path = resolve_model(model)
    return _load_tokenizer(path, revision, bool(trust_remote_code), _tokenizer_stamp(path))


def _tokenizer_stamp(path: str) -> tuple:
    """Changes when a local tokenizer is rewritten, so the cache never serves a stale one."""
    files = [Path(path) / n for n in ("tokenizer.json", "tokenizer_config.json")]
    return tuple(f.stat().st_mtime_ns if f.is_file() else None for f in files)


@functools.lru_cache(maxsize=8)
def _load_tokenizer(model: str, revision: str | None, trust_remote_code: bool, stamp: tuple):
    from transformers import AutoTokenizer

    try:
        # trust_remote_code is always passed as a bool: left out (None), transformers asks
        # on a terminal whether to run the model's code, and waits for the answer.
        tok = AutoTokenizer.from_pretrained(
            model, revision=revision, trust_remote_code=trust_remote_code
        )
    except Exception as e:
        what = f"cannot load the tokenizer of {model!r}"
        raise _load_error(what, model, e, trust_remote_code) from e
    if not getattr(tok, "is_fast", False):
        raise InputError(
            f"{model!r} has no fast tokenizer; tokedit needs character offsets",
            remedy="use a model with a tokenizer.json (a `tokenizers` fast tokenizer)",
        )
    return tok


_LOAD_REMEDY = "pass a local directory saved with save_pretrained, a .gguf file (e.g. from `tokedit prior fetch gemma-3-270m`), or a hub name on a machine that can reach the hub"


def _load_error(what: str, model: str, e: Exception, trusted: bool) -> InputError:
    """The error of a failed load, in particular of a model that ships its own code and was
    not trusted (transformers asks for ``trust_remote_code=True``) and of a pickled weights
    file that holds more than tensors (``torch.load(weights_only=True)`` refused it)."""
    if _unpickling_refused(e):
        return InputError(
            f"{what}: a .bin / .pt weights file there is a pickle that holds more than "
            "tensors (code or other objects), so torch.load(weights_only=True) refused it; "
            "nothing of it was run",
            remedy="use a copy of the model with safetensors weights (model.safetensors); "
            "tokedit never loads a pickle beyond plain tensors",
        )
    if trusted or "trust_remote_code" not in str(e):
        return InputError(f"{what}: {e}", remedy=_LOAD_REMEDY)
    return InputError(
        f"{model!r} ships its own Python code (an auto_map in its config.json or "
        "tokenizer_config.json), which tokedit runs only when asked; nothing of it was run",
        remedy=f"read that code first; if you trust it, pass {arg('trust_remote_code', True)} "
        "(it then runs with your permissions), or use a model of an architecture transformers "
        "includes",
    )


def _unpickling_refused(e: BaseException | None) -> bool:
    """Whether ``e`` (or an exception it was raised from) is torch's weights-only unpickler
    refusing a pickle."""
    while e is not None:
        if isinstance(e, pickle.UnpicklingError):
            return True
        e = e.__cause__ or e.__context__
    return False


def _check_model_path(model: str) -> None:
    # Hub names are "name" or "org/name"; anything else that does not exist is a bad path.
    looks_local = model.startswith((".", "/", "~")) or model.count("/") > 1
    if looks_local and not Path(model).expanduser().exists():
        raise InputError(f"model path {model!r} does not exist", remedy=_LOAD_REMEDY)


def load_causal_lm(
    model: str, revision: str | None = None, *, trust_remote_code: bool = False, **kwargs
):
    """``AutoModelForCausalLM.from_pretrained`` of a directory, hub name or GGUF prior."""
    from transformers import AutoModelForCausalLM

    _check_model_path(model)
    try:
        return AutoModelForCausalLM.from_pretrained(
            resolve_model(model),
            revision=revision,
            trust_remote_code=trust_remote_code,
            weights_only=True,  # a pickled .bin: tensors only, never the objects it names
            **kwargs,
        )
    except Exception as e:
        raise _load_error(f"cannot load model {model!r}", model, e, trust_remote_code) from e


def _model_config(model: str, revision: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoConfig

    _check_model_path(model)
    try:
        return AutoConfig.from_pretrained(
            resolve_model(model), revision=revision, trust_remote_code=trust_remote_code
        )
    except Exception as e:
        what = f"cannot load the config of {model!r}"
        raise _load_error(what, model, e, trust_remote_code) from e


def model_positions(
    model: str, revision: str | None = None, *, trust_remote_code: bool = False
) -> int | None:
    """The model's number of positions, read from its config (no weights loaded)."""
    config = _model_config(model, revision, trust_remote_code)
    return getattr(config, "max_position_embeddings", None)


def model_vocab_size(
    model: str, revision: str | None = None, *, trust_remote_code: bool = False
) -> int | None:
    """The size of the model's output vocabulary, read from its config (no weights loaded)."""
    config = _model_config(model, revision, trust_remote_code)
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
        self,
        model: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        revision: str | None = None,
        trust_remote_code: bool = False,
        logit_chunk: int | None = None,
        pack: bool = True,
    ):
        device_ = resolve_device(device)
        dtype_ = resolve_dtype(dtype, device_)
        # The family's default attention (SDPA where the family supports it): forcing SDPA
        # makes some families (Gemma 2) refuse to load.
        loaded = load_causal_lm(model, revision, trust_remote_code=trust_remote_code, dtype=dtype_)
        self._setup(loaded, device_, model, logit_chunk, pack)
        self.revision = getattr(self.model.config, "_commit_hash", None) or revision

    @classmethod
    def from_model(
        cls, model, *, device: str = "auto", logit_chunk: int | None = None, pack: bool = True
    ):
        """A backend around an already built ``model`` (benchmarks of random-initialised
        models): its dtype stays as it is."""
        self = cls.__new__(cls)
        self._setup(model, resolve_device(device), type(model).__name__, logit_chunk, pack)
        self.revision = None
        return self

    def _setup(self, model, device, name: str, logit_chunk: int | None, pack: bool) -> None:
        self.device = device
        # Several windows per row (windows.plan_batches(pack=True)) instead of padding.
        self.packs = pack
        self.model = model
        self.model.to(self.device).eval()
        self.dtype = next(self.model.parameters()).dtype
        self.decoder = self.model.get_decoder()
        self.head = LogitHead(self.model)
        check_head(self.model, self.head, name)
        if pack and not packs_exactly(self.decoder, self.device):
            self.packs = False  # the family ignores position ids in its mask: pad instead
        # Sized once, after the weights are on the device: recorded in the manifest.
        self.logit_chunk = logit_chunk or chunk_positions(self.head.vocab_size, self.device)
        self._pinned: torch.Tensor | None = None

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
        layout = batch_layout(windows, pack=self.packs)
        lengths = np.fromiter((w.length for w in windows), np.int64, len(windows))
        ids = batch_input_ids(seqs, windows, layout)
        hidden = self._hidden_states(ids, windows, layout, lengths)
        # Position q of a window is predicted from the hidden state at q-1.
        offsets, q, at = scored_index(windows, layout, lengths)
        flat = ids.reshape(-1)[at]  # the targets
        index = self._on_device(at - 1)
        targets_t = self._on_device(flat)
        h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
        located = None
        if on_rows is not None:
            located = _locate_rows(windows, np.diff(offsets), q, flat, on_rows)
        logprob, topk_ids, topk_lp, has_topk = score_positions(
            h,
            targets_t,
            self.head,
            top_k=top_k,
            min_p=min_p,
            chunk=self.logit_chunk,
            rows_above=rows_above,
            on_rows=located,
            to_host=self._to_host,
        )
        return [
            WindowScores(logprob[a:b], topk_ids[a:b], topk_lp[a:b], has_topk[a:b])
            for a, b in zip(offsets[:-1], offsets[1:], strict=True)
        ]

    def _hidden_states(self, ids: np.ndarray, windows, layout, lengths) -> torch.Tensor:
        """The decoder's last hidden states of the batch ``ids``: packed rows with position ids
        that restart at every window, padded rows with an attention mask."""
        width = layout.width
        mask = positions = None
        if self.packs:
            positions = self._on_device(packed_positions(windows, layout, lengths))
        elif bool((lengths < width).any()):
            mask_np = np.arange(width)[None, :] < lengths[:, None]
            mask = self._on_device(mask_np.astype(np.int64))
        extra = {} if positions is None else {"position_ids": positions}
        # No KV cache: nothing is generated (and transformers detects packing only without).
        return self.decoder(
            input_ids=self._on_device(ids), attention_mask=mask, use_cache=False, **extra
        ).last_hidden_state

    def _on_device(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a)
        return t if self.device.type == "cpu" else t.to(self.device, non_blocking=True)

    def _to_host(self, t: torch.Tensor) -> np.ndarray:
        """The batch's one device-to-host copy: through a reused pinned buffer on CUDA
        (non-blocking, then one wait), a view on CPU."""
        if t.device.type == "cpu":
            return t.numpy()
        n = t.numel()
        if self._pinned is None or self._pinned.numel() < n:
            self._pinned = torch.empty(max(n, 1 << 20), dtype=t.dtype, pin_memory=True)
        host = self._pinned[:n].view(t.shape)
        host.copy_(t, non_blocking=True)
        torch.cuda.current_stream(t.device).synchronize()
        return host.numpy().copy()  # the pinned buffer serves the next batch


def batch_input_ids(seqs: list[np.ndarray], windows: list[Window], layout) -> np.ndarray:
    """The batch's ``[rows, width]`` token ids: each window's tokens at its row and column."""
    ids = np.zeros((layout.n_rows, layout.width), dtype=np.int64)
    for w, r, c in zip(windows, layout.row.tolist(), layout.col.tolist(), strict=True):
        ids[r, c : c + w.length] = seqs[w.doc][w.start : w.end]
    return ids


def packed_positions(windows: list[Window], layout, lengths: np.ndarray) -> np.ndarray:
    """Position ids of packed rows: they restart at every window (and at each row's unused
    tail, whose tokens attend only to each other), so transformers masks attention to blocks,
    one per window, also in sliding-window layers."""
    pos_np = np.tile(np.arange(layout.width), (layout.n_rows, 1))
    for w, r, c in zip(windows, layout.row.tolist(), layout.col.tolist(), strict=True):
        pos_np[r, c : c + w.length] -= c
    tail = np.zeros(layout.n_rows, dtype=np.int64)
    np.maximum.at(tail, layout.row, layout.col + lengths)
    for r, t in enumerate(tail.tolist()):
        pos_np[r, t:] -= t
    return pos_np


def scored_index(
    windows: list[Window], layout, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scored positions of a batch, without a loop over positions: ``offsets`` [W+1] of
    each window's into the flat result, ``q`` each one's index in its window, ``at`` its flat
    index in the batch's ids."""
    first = np.fromiter((w.score_from - w.start for w in windows), np.int64, len(windows))
    sizes = lengths - first
    offsets = np.zeros(len(windows) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    q = np.arange(offsets[-1]) - np.repeat(offsets[:-1], sizes) + np.repeat(first, sizes)
    at = np.repeat(layout.row * layout.width + layout.col, sizes) + q  # flat input index
    return offsets, q, at


def _locate_rows(windows: list[Window], sizes: np.ndarray, q: np.ndarray, flat, on_rows):
    """``on_rows`` of :func:`score_positions` in the terms of :meth:`HFBackend.score_batch`:
    the window's document index and the position in its ``seq``."""
    doc = np.repeat(np.fromiter((w.doc for w in windows), np.int64, len(windows)), sizes)
    starts = np.fromiter((w.start for w in windows), np.int64, len(windows))
    pos = q + np.repeat(starts, sizes)

    def located(idx, lp_rows):
        on_rows(doc[idx], pos[idx], flat[idx], lp_rows)

    return located


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
    to_host=None,
):
    """Log-prob of each target and top-k candidates, computed ``chunk`` positions at a time.

    Returns numpy arrays: logprob [n] float32, topk ids [n, k] int32, topk log-probs [n, k]
    float32, and has_topk [n] bool (``P(target) >= min_p``; rows where it is False are zeros).

    Every result stays on the model's device, in one int32 buffer (floats by their bits),
    until the last chunk is done; then ``to_host`` copies it once (default ``.cpu()``).
    Nothing in the chunk loop waits for the device.

    ``on_rows(indices, logprob_rows)``, if given, is called once per chunk with the positions
    where ``P(target) > rows_above`` and their full float32 log-prob rows ``[m, vocab]`` (a
    tensor on the model's device). It lets the one-pass editor sample from the full
    distribution without a ``[n, vocab]`` array ever being kept; finding those positions
    reads them on the host once per chunk.
    """
    n = hidden.shape[0]
    chunk = chunk or chunk_positions(head.vocab_size, hidden.device)
    log_min_p = math.log(min_p) if min_p > 0 else -math.inf
    # Columns: logprob, has_topk, top-k log-probs, top-k ids.
    out = torch.zeros((n, 2 + 2 * top_k), dtype=torch.int32, device=hidden.device)
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        logits = head(hidden[a:b]).float()
        lse = torch.logsumexp(logits, dim=-1)
        lp = logits.gather(1, targets[a:b, None]).squeeze(1) - lse
        out[a:b, 0] = lp.view(torch.int32)
        if on_rows is not None:
            sel = (lp > math.log(rows_above)).nonzero().squeeze(1)
            if len(sel):
                on_rows(sel.cpu().numpy() + a, logits[sel] - lse[sel, None])
        if top_k > 0:
            # Top-k of every row, kept where P(target) >= min_p: a row's top-k does not
            # depend on the other rows, and no data-dependent selection waits for the device.
            keep = lp >= log_min_p
            values, idx = torch.topk(logits, top_k, dim=-1)
            out[a:b, 1] = keep.to(torch.int32)
            out[a:b, 2 : 2 + top_k] = (values - lse[:, None]).view(torch.int32)
            out[a:b, 2 + top_k :] = idx.to(torch.int32)
    return unpack_scores(to_host(out) if to_host is not None else out.cpu().numpy(), top_k)


def unpack_scores(host: np.ndarray, top_k: int):
    """The arrays of :func:`score_positions` from its one int32 buffer (floats by their bits;
    columns: logprob, has_topk, top-k log-probs, top-k ids); zeros where there is no top-k."""
    logprob = host[:, 0].view(np.float32)
    has_topk = host[:, 1].astype(bool)
    topk_lp = np.where(has_topk[:, None], host[:, 2 : 2 + top_k].view(np.float32), 0)
    topk_ids = np.where(has_topk[:, None], host[:, 2 + top_k :], 0)
    return (
        np.ascontiguousarray(logprob),
        topk_ids.astype(np.int32),
        topk_lp.astype(np.float32),
        has_topk,
    )


def chunk_positions(vocab_size: int, device: torch.device | str = "cpu") -> int:
    """Positions of one LM-head chunk: on CUDA from the device's free memory
    (``CUDA_FREE_SHARE`` of it, ``CUDA_BYTES_PER_LOGIT`` per logit), elsewhere from
    ``CPU_LOGIT_CHUNK_BYTES`` of float32 logits; between 1 and ``MAX_CHUNK_POSITIONS``."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return positions_for_free_memory(free, vocab_size)
    return max(1, min(MAX_CHUNK_POSITIONS, CPU_LOGIT_CHUNK_BYTES // (4 * vocab_size)))


def positions_for_free_memory(free_bytes: int, vocab_size: int) -> int:
    """Positions of a CUDA LM-head chunk when the device reports ``free_bytes`` free."""
    positions = int(free_bytes * CUDA_FREE_SHARE) // (CUDA_BYTES_PER_LOGIT * vocab_size)
    return max(1, min(MAX_CHUNK_POSITIONS, positions))


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
def packs_exactly(decoder, device) -> bool:
    """Whether ``decoder`` keeps windows packed into one row apart (position ids restarting,
    no KV cache): the hidden states of two packed probe windows equal those of each alone.
    Families that build their mask without the position ids (OPT, Falcon) fail it."""
    a = (torch.arange(PROBE_IDS, dtype=torch.long) * 7 + 3)[None].to(device)
    b = (torch.arange(PROBE_IDS // 2, dtype=torch.long) * 11 + 5)[None].to(device)
    positions = torch.cat([torch.arange(a.shape[1]), torch.arange(b.shape[1])])[None]
    packed = decoder(
        input_ids=torch.cat([a, b], 1), position_ids=positions.to(device), use_cache=False
    ).last_hidden_state.float()
    alone = torch.cat(
        [decoder(input_ids=x, use_cache=False).last_hidden_state.float() for x in (a, b)], 1
    )
    scale = float(alone.abs().max()) or 1.0
    # A family that attends across the windows is off by about the states' own scale.
    tolerance = 1e-4 if next(decoder.parameters()).dtype == torch.float32 else 2e-2
    return float((packed - alone).abs().max()) <= tolerance * max(1.0, scale)


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
