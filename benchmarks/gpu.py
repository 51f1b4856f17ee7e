"""The scorer against the hardware: raw forward vs `tokedit score`'s backend on one GPU.

For each model architecture in ``benchmarks/configs/`` (Gemma 3 270M, Qwen2.5-0.5B,
Llama-3.2-1B; random-initialised from the committed config.json, no weights, nothing
downloaded) and token ids of realistic document lengths (log-normal, median ~550 tokens,
some longer than ``--max-length``), it prints:

- raw forward tokens/s: ``model(input_ids)`` (full logits) on the same tokens packed into
  full rows of ``--max-length`` (the limit: no windows, no log-probs, no top-k);
- tokedit tokens/s: scored tokens per second of the hf backend tokedit score runs
  (windows with overlap, packed batches, log-probs and top-k, one host copy per batch);
  tokenization and writing, which overlap the model in ``tokedit score``, are not included;
- their ratio (goal >= 0.85), model FLOPs utilisation of each (model FLOPs per scored token,
  over the device's dense bf16 peak), peak GPU memory;
- the bf16-vs-fp32 gap: max and mean |delta log P| on the actual tokens and the share of
  P > 0.99 decisions that flip;
- with vLLM importable (and a GPU), vLLM ``prompt_logprobs`` tokens/s on the same windows.

    python benchmarks/gpu.py                 # on a GPU machine, ~3-6 minutes
    python benchmarks/gpu.py --tiny          # the same code on CPU with tiny models, seconds
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

from tokedit.scoring.hf import HFBackend
from tokedit.scoring.windows import plan_batches, plan_windows

CONFIGS = Path(__file__).with_name("configs")
MODELS = ("gemma-3-270m", "qwen2.5-0.5b", "llama-3.2-1b")
TOP_K = 8
# Dense bf16 peak FLOP/s by device name (substring, first match): the MFU denominator.
PEAK_BF16 = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 125e12),
    ("4090", 165e12),
)


def load_config(name: str, tiny: bool) -> transformers.PretrainedConfig:
    data = json.loads((CONFIGS / f"{name}.json").read_text())
    if tiny:  # the same families and structure, a few hundred thousand parameters
        heads, kv = 4, 1 if data.get("num_key_value_heads", 4) < 4 else 2
        data.update(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=heads,
            num_key_value_heads=kv,
            head_dim=16,
            vocab_size=1024,
            bos_token_id=2,
            eos_token_id=1,
        )
        if "layer_types" in data:
            data["layer_types"] = ["sliding_attention", "full_attention"]
            data["sliding_window"] = 32
            data["query_pre_attn_scalar"] = 16
    return transformers.AutoConfig.for_model(**data)


def documents(vocab: int, n_tokens: int, max_len: int, seed: int = 0) -> list[np.ndarray]:
    """Token ids of log-normal document lengths (median ~550, a tail past ``max_len``)."""
    rng = np.random.default_rng(seed)
    seqs, total = [], 0
    while total < n_tokens:
        n = int(np.clip(rng.lognormal(math.log(550), 1.0), 8, 8 * max_len))
        n = min(n, n_tokens - total) if n_tokens - total > 8 else n
        seqs.append(rng.integers(3, vocab, n).astype(np.int32))
        total += n
    return seqs


def flops_per_token(config, n_params: int, vocab: int, hidden: int, context: float) -> float:
    """Model FLOPs per token: 2 x matmul parameters (embeddings out, the LM head in) plus
    attention scores and values over ``context`` positions."""
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    # The input embedding is a lookup; a tied one is counted once, as the LM head.
    tied = getattr(config, "tie_word_embeddings", True)
    matmul = n_params if tied else n_params - vocab * hidden
    return 2 * matmul + 4 * layers * heads * head_dim * context


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


@torch.inference_mode()
def raw_forward(model, seqs, max_len: int, batch_tokens: int, device) -> float:
    flat = np.concatenate(seqs).astype(np.int64)
    n_rows = len(flat) // max_len
    blocks = torch.from_numpy(flat[: n_rows * max_len]).view(n_rows, max_len).to(device)
    vocab = model.config.vocab_size
    # Full bf16 logits of a batch stay under 8 GiB.
    rows = max(1, min(batch_tokens // max_len, (8 << 30) // (2 * max_len * vocab)))
    model(input_ids=blocks[:rows], use_cache=False)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for a in range(0, n_rows, rows):
        model(input_ids=blocks[a : a + rows], use_cache=False)
    sync(device)
    return blocks.numel() / (time.perf_counter() - t0)


@torch.inference_mode()
def tokedit_scores(backend, seqs, max_len: int, batch_tokens: int, device):
    """Scored tokens/s of the backend over every window, and the log-probs per window."""
    windows = [
        w for d, s in enumerate(seqs) for w in plan_windows(len(s), max_len, max_len // 8, doc=d)
    ]
    batches = plan_batches(windows, batch_tokens, pack=backend.packs)
    backend.score_batch(seqs, batches[0], top_k=TOP_K, min_p=0.0)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    out = {}
    for batch in batches:
        for w, r in zip(
            batch, backend.score_batch(seqs, batch, top_k=TOP_K, min_p=0.0), strict=True
        ):
            out[w.doc, w.start] = r.logprob
    sync(device)
    scored = sum(w.end - w.score_from for w in windows)
    lp = np.concatenate([out[w.doc, w.start] for w in windows])
    return scored / (time.perf_counter() - t0), lp, windows


def vllm_prompt_logprobs(model, windows, seqs, dtype: str) -> float | str:
    """vLLM ``prompt_logprobs`` tokens/s on the same windows (or why it did not run)."""
    try:
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
    except Exception as e:  # noqa: BLE001 - any import failure means: not available
        return f"not installed ({type(e).__name__})"
    try:
        return _vllm_run(LLM, SamplingParams, TokensPrompt, model, windows, seqs, dtype)
    except Exception as e:  # noqa: BLE001 - reported in the table, the rest still runs
        return f"failed: {type(e).__name__}: {str(e)[:80]}"


def _vllm_run(LLM, SamplingParams, TokensPrompt, model, windows, seqs, dtype: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        llm = LLM(
            model=tmp,
            skip_tokenizer_init=True,
            dtype=dtype,
            max_logprobs=TOP_K + 1,
            gpu_memory_utilization=0.6,
            enable_prefix_caching=False,
            max_model_len=max(w.length for w in windows) + 1,
        )
        params = SamplingParams(
            max_tokens=1, prompt_logprobs=TOP_K, detokenize=False, temperature=0.0
        )
        prompts = [
            TokensPrompt(prompt_token_ids=seqs[w.doc][w.start : w.end].tolist()) for w in windows
        ]
        llm.generate(prompts[:4], params, use_tqdm=False)  # warm-up
        t0 = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - t0
        del llm
    return sum(w.end - w.score_from for w in windows) / elapsed


def bench(name: str, args, device: torch.device, peak: float | None) -> dict:
    config = load_config(name, args.tiny)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    n_params = sum(p.numel() for p in model.parameters())
    seqs = documents(config.vocab_size, args.tokens, args.max_length)
    fpt = flops_per_token(
        config, n_params, config.vocab_size, config.hidden_size, args.max_length / 2
    )

    reset_peak(device)
    raw = raw_forward(model, seqs, args.max_length, args.batch_tokens, device)
    raw_mem = peak_memory(device)
    backend = HFBackend.from_model(model, device=str(device))
    reset_peak(device)
    ours, lp, windows = tokedit_scores(backend, seqs, args.max_length, args.batch_tokens, device)
    our_mem = peak_memory(device)

    # bf16 vs fp32 on the first documents (about --gap-tokens tokens)
    n, k = 0, 0
    while k < len(seqs) and n < args.gap_tokens:
        n, k = n + len(seqs[k]), k + 1
    sub = seqs[:k]
    gaps = {}
    for dt in (torch.float32, torch.bfloat16):
        model.to(dt)
        b = HFBackend.from_model(model, device=str(device), logit_chunk=backend.logit_chunk)
        gaps[dt] = tokedit_scores(b, sub, args.max_length, args.batch_tokens, device)[1]
    model.to(dtype)
    delta = np.abs(gaps[torch.bfloat16].astype(np.float64) - gaps[torch.float32])
    above = np.log(0.99)
    flips = np.mean((gaps[torch.bfloat16] > above) != (gaps[torch.float32] > above))

    chunk = backend.logit_chunk
    vllm = "skipped (no GPU)" if device.type != "cuda" or args.no_vllm else None
    if vllm is None:
        del backend
        torch.cuda.empty_cache()
        vllm = vllm_prompt_logprobs(model, windows, seqs, "bfloat16")
    row = {
        "model": name + (" (tiny)" if args.tiny else ""),
        "params_m": n_params / 1e6,
        "tokens": int(sum(len(s) for s in seqs)),
        "raw_tok_s": raw,
        "tokedit_tok_s": ours,
        "ratio": ours / raw,
        "raw_mfu": raw * fpt / peak if peak else None,
        "tokedit_mfu": ours * fpt / peak if peak else None,
        "raw_peak_gib": raw_mem,
        "tokedit_peak_gib": our_mem,
        "logit_chunk": chunk,
        "bf16_max_abs_dlogp": float(delta.max()),
        "bf16_mean_abs_dlogp": float(delta.mean()),
        "bf16_p99_flips": float(flips),
        "vllm_tok_s": vllm,
    }
    del model
    return row


def device_peak(device: torch.device, override: float | None) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", override * 1e12 if override else None
    name = torch.cuda.get_device_name(device)
    if override:
        return name, override * 1e12
    return name, next((p for key, p in PEAK_BF16 if key in name), None)


def fmt(v, spec: str) -> str:
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return format(v, spec)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tiny", action="store_true", help="tiny models on CPU (CI)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--tokens", type=int, default=None, help="tokens per model")
    ap.add_argument("--gap-tokens", type=int, default=None, help="tokens of the bf16 gap")
    ap.add_argument("--max-length", type=int, default=None)
    ap.add_argument("--batch-tokens", type=int, default=None)
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the MFU peak")
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args(argv)
    args.tokens = args.tokens or (4096 if args.tiny else 262_144)
    args.gap_tokens = args.gap_tokens or (1024 if args.tiny else 16_384)
    args.max_length = args.max_length or (128 if args.tiny else 1024)
    args.batch_tokens = args.batch_tokens or (1024 if args.tiny else 32_768)
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    name, peak = device_peak(device, args.peak_tflops)
    print(
        f"device {name}; torch {torch.__version__}, transformers {transformers.__version__}; "
        f"{args.tokens} tokens per model, max length {args.max_length}, batch {args.batch_tokens} tokens; "
        f"MFU peak {fmt(peak and peak / 1e12, '.0f')} TFLOP/s"
    )
    rows = [bench(m, args, device, peak) for m in args.models.split(",")]
    print(
        "| model | params | raw tok/s | tokedit tok/s | ratio | MFU raw / tokedit | peak GiB raw / tokedit "
        "| bf16 max / mean abs dlogP | P>0.99 flips | vLLM tok/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['params_m']:.1f}M | {r['raw_tok_s']:,.0f} | {r['tokedit_tok_s']:,.0f} "
            f"| {r['ratio']:.2f} | {fmt(r['raw_mfu'], '.1%')} / {fmt(r['tokedit_mfu'], '.1%')} "
            f"| {fmt(r['raw_peak_gib'], '.1f')} / {fmt(r['tokedit_peak_gib'], '.1f')} "
            f"| {r['bf16_max_abs_dlogp']:.3f} / {r['bf16_mean_abs_dlogp']:.4f} "
            f"| {r['bf16_p99_flips']:.3%} | {fmt(r['vllm_tok_s'], ',.0f')} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
