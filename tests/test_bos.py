"""``--bos auto|always|never``: the decision on real tokenizers, the manifests, the edit check."""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest
from scale_helpers import invoke, write_rows

from tokedit.editor import EditOptions, edit_dataset
from tokedit.errors import InputError
from tokedit.io.manifest import read_manifest
from tokedit.scoring.options import ScoreOptions
from tokedit.scoring.run import score_dataset
from tokedit.scoring.scorer import bos_prepended
from tokedit.training.prior import train_tokenizer

PS = (0.1, 0.3, 0.5)
TEXT = "The quick brown fox jumps over the lazy dog. To be, or not to be. " * 10


def bpe(template: str | None, bos: str | None = "<s>"):
    """A byte-level BPE trained here; ``template``: its TemplateProcessing ``single``
    (None: no post-processor, GPT-2 style); ``bos``: the tokenizer's declared BOS token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "</s>", "[CLS]"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        [TEXT],
        trainer=trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    if template is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[(s, i) for i, s in enumerate(specials)]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token="</s>")


@pytest.mark.parametrize(
    "template,bos,auto,always",
    [
        ("<s> $A", "<s>", True, True),  # Llama / Gemma: the template prepends the BOS
        ("<s> $A </s>", "<s>", True, True),  # BOS and EOS around the text
        (None, "<s>", False, True),  # GPT-2 style: a BOS token exists, nothing is added
        ("[CLS] $A", "<s>", False, True),  # something is prepended, but it is not the BOS
        (None, None, False, False),  # Qwen style: no BOS token at all
    ],
)
def test_bos_prepended_follows_the_tokenizer(template, bos, auto, always):
    tok = bpe(template, bos)
    assert bos_prepended(tok, "auto") is auto
    assert bos_prepended(tok, "always") is always
    assert bos_prepended(tok, "never") is False


def test_scratch_prior_tokenizer_adds_no_bos_of_its_own():
    # The scratch prior is trained on EOS-separated text without a BOS: auto must not add one.
    tok = train_tokenizer([TEXT], vocab_size=300)
    assert tok.bos_token_id is not None
    assert bos_prepended(tok, "auto") is False and bos_prepended(tok, "always") is True


def test_unknown_mode_is_refused():
    with pytest.raises(InputError, match="^bos='sometimes' is not one of"):
        bos_prepended(bpe("<s> $A"), "sometimes")


# ------------------------------------------------------------ with the tiny scratch prior


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, plays):
    d = tmp_path_factory.mktemp("bos-data")
    write_rows(d / "a.parquet", [{"text": plays["hamlet"][i : i + 300]} for i in (0, 900)])
    return d


def _score(data, out, prior, bos):
    score_dataset(
        str(data),
        str(out),
        model=str(prior),
        options=ScoreOptions(max_length=128, overlap=32, candidates_min_p=0.05, bos=bos),
        device="cpu",
        progress=False,
    )
    return read_manifest(out)


@pytest.fixture(scope="module")
def scored(tmp_path_factory, small_data, tiny_prior):
    """Scores of ``small_data`` with the default ``--bos auto`` and with ``--bos always``."""
    root = tmp_path_factory.mktemp("bos-scores")
    for bos in ("auto", "always"):
        _score(small_data, root / bos, tiny_prior, bos)
    return {bos: root / bos for bos in ("auto", "always")}


def n_above(scores_dir, p: float) -> int:
    rows = pq.read_table(scores_dir / "a.parquet").column("logprob").to_pylist()
    return sum(lp is not None and lp > math.log(p) for row in rows for lp in row)


def test_manifest_records_the_resolved_bos(scored):
    for bos, add_bos in (("auto", False), ("always", True)):
        m = read_manifest(scored[bos])
        assert m["options"]["add_bos"] is add_bos and m["info"]["bos"] == bos
        first = [
            lp[0] for lp in pq.read_table(scored[bos] / "a.parquet").column("logprob").to_pylist()
        ]
        # without a BOS the first token has no context: null; with one, a real log-prob
        assert all((v is None) is (not add_bos) for v in first)


def test_resume_accepts_another_mode_that_resolves_the_same(tmp_path, small_data, tiny_prior):
    # scratch prior: auto and never both mean "no BOS": same bytes, so resuming is fine;
    # always means a BOS: other bytes, so the manifest refuses to mix them.
    _score(small_data, tmp_path, tiny_prior, "auto")
    _score(small_data, tmp_path, tiny_prior, "never")
    with pytest.raises(Exception, match="add_bos"):
        _score(small_data, tmp_path, tiny_prior, "always")


@pytest.mark.parametrize(
    "scores,bos,refused",
    [
        ("auto", None, False),  # no --bos: the scores' choice is taken
        ("auto", "never", False),  # resolves to "no BOS", as scored
        ("auto", "always", True),
        ("always", "always", False),
        ("always", "auto", True),  # auto means no BOS for this tokenizer; these had one
    ],
)
def test_edit_refuses_scores_made_with_another_bos(
    tmp_path, small_data, scored, scores, bos, refused
):
    def run():
        return edit_dataset(
            str(small_data),
            str(tmp_path / "out"),
            scores_dir=str(scored[scores]),
            options=EditOptions(ps=(0.5,)),
            **({"bos": bos} if bos else {}),
            progress=False,
        )

    if refused:
        with pytest.raises(InputError, match=f"^bos='{bos}' .* but .* was scored") as e:
            run()
        assert (
            f"fix: leave bos out to edit with the scores as they are, or rescore with bos='{bos}'"
            in str(e.value)
        )
    else:
        assert run().totals["0.5"].scored > 0


@pytest.mark.parametrize("bos,add_bos", [(None, False), ("always", True)])
def test_one_pass_edit_uses_and_records_the_bos(
    tmp_path, small_data, tiny_prior, scored, bos, add_bos
):
    s = edit_dataset(
        str(small_data),
        str(tmp_path),
        model=str(tiny_prior),
        options=EditOptions(ps=PS),
        max_length=128,
        overlap=32,
        device="cpu",
        **({"bos": bos} if bos else {}),
        progress=False,
    )
    m = read_manifest(tmp_path)
    assert m["options"]["add_bos"] is add_bos and m["info"]["bos"] == (bos or "auto")
    # as many tokens are above each p as in the scores made with the same BOS choice (and
    # the two choices give different counts, so this tells them apart)
    same, other = (
        (scored["always"], scored["auto"]) if add_bos else (scored["auto"], scored["always"])
    )
    got = [s.totals[repr(p)].above for p in PS]
    assert got == [n_above(same, p) for p in PS] != [n_above(other, p) for p in PS]


def test_cli_bos_and_deprecated_no_bos(tmp_path, small_data, tiny_prior):
    args = ["score", str(small_data), "--model", str(tiny_prior), "--max-length", "128", "-q"]
    r = invoke(*args, "--out", str(tmp_path / "a"), "--no-bos")
    assert r.returncode == 0, r.stderr
    m = read_manifest(tmp_path / "a")
    assert m["info"]["bos"] == "never" and m["options"]["add_bos"] is False
    r = invoke(*args, "--out", str(tmp_path / "b"), "--bos", "always")
    assert r.returncode == 0, r.stderr
    assert read_manifest(tmp_path / "b")["options"]["add_bos"] is True
    r = invoke(*args, "--out", str(tmp_path / "c"), "--no-bos", "--bos", "always")
    assert r.returncode == 2 and "--no-bos contradicts --bos always" in r.stderr
    r = invoke("score", "--help")
    assert "--bos [auto|always|never]" in r.stdout and "--no-bos" not in r.stdout
