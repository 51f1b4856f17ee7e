"""``benchmarks/gpu.py --tiny``: the GPU benchmark's code runs on CPU in CI, so it never rots
before a GPU machine runs it (random-initialised tiny models of the committed configs)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import transformers

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def _module():
    spec = importlib.util.spec_from_file_location("tokedit_gpu_benchmark", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_configs_are_the_named_architectures():
    gpu = _module()
    sizes = {"gemma-3-270m": 268e6, "qwen2.5-0.5b": 494e6, "llama-3.2-1b": 1236e6}
    import torch

    for name in gpu.MODELS:
        config = gpu.load_config(name, tiny=False)
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config)
        n = sum(p.numel() for p in model.parameters())
        assert abs(n / sizes[name] - 1) < 0.01, (name, n)
    assert json.loads((gpu.CONFIGS / "gemma-3-270m.json").read_text())["sliding_window"] == 512


def test_tiny_run_prints_every_figure(capsys):
    rows = _module().main(["--tiny", "--tokens", "2048", "--gap-tokens", "512"])
    out = capsys.readouterr().out
    assert [r["model"] for r in rows] == [
        "gemma-3-270m (tiny)",
        "qwen2.5-0.5b (tiny)",
        "llama-3.2-1b (tiny)",
    ]
    for r in rows:
        assert r["tokens"] >= 2048 and r["raw_tok_s"] > 0 and r["tokedit_tok_s"] > 0
        assert math.isclose(r["ratio"], r["tokedit_tok_s"] / r["raw_tok_s"])
        # bf16 moves log-probs, but not by whole nats on average
        assert 0 < r["bf16_mean_abs_dlogp"] < 0.05 and r["bf16_max_abs_dlogp"] < 1
        assert 0 <= r["bf16_p99_flips"] <= 1
        assert r["vllm_tok_s"] == "skipped (no GPU)"
        assert f"| {r['model']} |" in out
