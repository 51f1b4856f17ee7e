"""Every prior family scored exactly: tiny random models of the families people use as priors.

Each family is built from the config class transformers ships (2 layers, hidden 32, the
shared ~300-token byte-level BPE below), saved with ``save_pretrained`` and scored with
``tokedit.scoring.run.score_dataset`` exactly as ``tokedit score --model DIR`` would. The
stored log-probs must equal ``log_softmax(model(ids).logits)`` computed here in float64, per
window, at 1e-4, on a document that spans several windows (``max_len`` 48, overlap 8) next
to a short one (so batches are padded), with a BOS (``--bos auto``: this tokenizer's template
prepends one) and without (``--bos never``).

The weights are scaled up so that logits are O(10): Gemma 2/3's soft-capping at 5.0,
Cohere's ``logit_scale`` 0.5 and Granite's ``logits_scaling`` 4.0 then move the log-probs by
whole nats, and a backend that applies only the LM head fails
(``test_post_head_processing_is_not_trivial`` checks that the setup shows it).
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import transformers

from tokedit.errors import InputError
from tokedit.io.manifest import read_manifest
from tokedit.scoring.hf import HFBackend
from tokedit.scoring.options import ScoreOptions
from tokedit.scoring.run import score_dataset

MAX_LEN, OVERLAP = 48, 8
HIDDEN, HEADS, LAYERS = 32, 4, 2

_TEXT = (
    "The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune. Ça fait déjà 3 € — naïve café. "
    "All the world's a stage, and all the men and women merely players; they have their "
    "exits and their entrances, and one man in his time plays many parts. "
)


@pytest.fixture(scope="module")
def zoo_tokenizer():
    """A byte-level BPE (~330 tokens) trained here, with <s>/</s>/<pad>; its template prepends
    <s> like Llama's, so ``--bos auto`` puts a BOS first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=330,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_TEXT] * 20, trainer=trainer)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)]
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def _configs(vocab: int) -> dict[str, transformers.PretrainedConfig]:
    special = dict(bos_token_id=0, eos_token_id=1, pad_token_id=2)
    llama_like = dict(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=2,
        max_position_embeddings=128,
        **special,
    )
    t = transformers
    return {
        "llama": t.LlamaConfig(**llama_like),
        "mistral": t.MistralConfig(**llama_like),
        "qwen2": t.Qwen2Config(**llama_like),
        "qwen3": t.Qwen3Config(**llama_like, head_dim=8),
        "gemma": t.GemmaConfig(**llama_like, head_dim=8),
        "gemma2": t.Gemma2Config(
            **llama_like, head_dim=8, final_logit_softcapping=5.0, attn_logit_softcapping=50.0
        ),
        "gemma3": t.Gemma3TextConfig(
            **llama_like, head_dim=8, final_logit_softcapping=5.0, sliding_window=16
        ),
        "phi3": t.Phi3Config(**llama_like),
        "gpt2": t.GPT2Config(
            vocab_size=vocab,
            n_embd=HIDDEN,
            n_layer=LAYERS,
            n_head=HEADS,
            n_positions=128,
            **special,
        ),  # fmt: skip
        "gpt_neox": t.GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=HIDDEN,
            intermediate_size=64,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            max_position_embeddings=128,
            **special,
        ),  # fmt: skip
        "opt": t.OPTConfig(
            vocab_size=vocab,
            hidden_size=HIDDEN,
            ffn_dim=64,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            word_embed_proj_dim=HIDDEN,
            max_position_embeddings=128,
            **special,
        ),  # fmt: skip
        "falcon": t.FalconConfig(
            vocab_size=vocab,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            **special,
        ),  # fmt: skip
        "olmo2": t.Olmo2Config(**llama_like),
        "stablelm": t.StableLmConfig(**llama_like),
        "cohere": t.CohereConfig(**llama_like, logit_scale=0.5),
        "granite": t.GraniteConfig(**llama_like, logits_scaling=4.0),
    }


FAMILIES = list(_configs(8))


def _build(config) -> torch.nn.Module:
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # logits O(10): soft-capping and scaling then matter by nats
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
        head = model.get_output_embeddings().weight
        head.mul_(8.0 / head.norm(dim=1, keepdim=True).mean())
    return model


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, zoo_tokenizer):
    """``save_pretrained`` directories of every family, and a dataset of two documents."""
    root = tmp_path_factory.mktemp("zoo")
    data = root / "data"
    data.mkdir()
    texts = [_TEXT * 2, "Short one."]
    pq.write_table(pa.Table.from_pylist([{"text": t} for t in texts]), data / "a.parquet")
    dirs = {}
    for name, config in _configs(len(zoo_tokenizer)).items():
        d = root / name
        _build(config).save_pretrained(d)
        zoo_tokenizer.save_pretrained(d)
        dirs[name] = d
    return dirs, data, texts


def reference_logprobs(model, seq: list[int]) -> np.ndarray:
    """``log P(seq[p] | seq[:p])`` with the same windows, computed independently: the window
    of position p starts at the multiple of the stride that leaves it in the window."""
    stride = MAX_LEN - OVERLAP
    out = np.full(len(seq), np.nan)
    rows: dict[int, torch.Tensor] = {}
    for p in range(1, len(seq)):
        start = 0 if p < MAX_LEN else math.ceil((p - MAX_LEN + 1) / stride) * stride
        if start not in rows:
            ids = torch.tensor(seq[start : start + MAX_LEN])[None]
            with torch.no_grad():
                rows[start] = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
        out[p] = rows[start][p - start - 1, seq[p]].item()
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_stored_logprobs_equal_the_models_own_logits(tmp_path, zoo, zoo_tokenizer, family):
    dirs, data, texts = zoo
    model = transformers.AutoModelForCausalLM.from_pretrained(dirs[family]).eval()
    for bos, bos_first in (("auto", True), ("never", False)):
        out = tmp_path / bos
        score_dataset(
            str(data),
            str(out),
            model=str(dirs[family]),
            options=ScoreOptions(max_length=MAX_LEN, overlap=OVERLAP, batch_tokens=4096, bos=bos),
            device="cpu",
            dtype="float32",
            progress=False,
        )
        manifest = read_manifest(out)
        assert manifest["options"]["add_bos"] is bos_first and manifest["info"]["bos"] == bos
        rows = pq.read_table(out / "a.parquet").to_pylist()
        for row, text in zip(rows, texts, strict=True):
            ids = zoo_tokenizer(text, add_special_tokens=False)["input_ids"]
            assert row["token_ids"] == ids
            seq = ([zoo_tokenizer.bos_token_id] if bos_first else []) + ids
            ref = reference_logprobs(model, seq)[len(seq) - len(ids) :]
            got = np.array([np.nan if v is None else v for v in row["logprob"]])
            if not bos_first:
                assert row["logprob"][0] is None  # no context: null, not a number
            np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0, equal_nan=True)
        assert len(rows[0]["token_ids"]) > 2 * MAX_LEN  # the long document spans 3+ windows


@pytest.mark.parametrize("family", ["gemma2", "gemma3", "cohere", "granite"])
def test_post_head_processing_is_not_trivial(zoo, family):
    """The LM head alone gives other log-probs (by > 0.1 nat): the zoo catches a backend that
    skips soft-capping or logit scaling."""
    dirs, _, _ = zoo
    model = transformers.AutoModelForCausalLM.from_pretrained(dirs[family]).eval()
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        full = torch.log_softmax(model(input_ids=ids).logits.double(), -1)
        hidden = model.get_decoder()(input_ids=ids).last_hidden_state
        head_only = torch.log_softmax(model.get_output_embeddings()(hidden).double(), -1)
    assert float((full - head_only).abs().max()) > 0.1


class TripledConfig(transformers.LlamaConfig):
    model_type = "tokedit-test-tripled-llama"


class TripledLlama(transformers.LlamaForCausalLM):
    """A Llama whose ``forward`` multiplies its logits by 3: a post-processing step tokedit
    does not know (loaded through the Auto classes like any registered custom family)."""

    config_class = TripledConfig

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 3
        return out


def test_unknown_logit_post_processing_is_refused(tmp_path, zoo, zoo_tokenizer):
    transformers.AutoConfig.register(TripledConfig.model_type, TripledConfig, exist_ok=True)
    transformers.AutoModelForCausalLM.register(TripledConfig, TripledLlama, exist_ok=True)
    _, data, _ = zoo
    config = TripledConfig(**_configs(len(zoo_tokenizer))["llama"].to_diff_dict())
    _build(config).save_pretrained(tmp_path / "tripled")
    zoo_tokenizer.save_pretrained(tmp_path / "tripled")
    with pytest.raises(InputError, match="post-processes its logits") as e:
        HFBackend(str(tmp_path / "tripled"), device="cpu", dtype="float32")
    assert "TripledLlama" in str(e.value)
    with pytest.raises(InputError, match="post-processes its logits"):
        score_dataset(
            str(data),
            str(tmp_path / "scores"),
            model=str(tmp_path / "tripled"),
            options=ScoreOptions(max_length=MAX_LEN, overlap=OVERLAP),
            device="cpu",
            dtype="float32",
            progress=False,
        )
    assert not list((tmp_path / "scores").glob("*.parquet"))  # nothing written
