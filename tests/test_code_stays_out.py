"""No code from a model or a file runs unless the user asks: a model that ships its own
Python code (an ``auto_map``) is refused without ``--trust-remote-code`` / ``trust_remote_code
=True`` and none of its code is imported; with it, the code runs. Weights, scores, manifests
and reports are read as data: a pickle in their place is refused, naming the file, and never
unpickled. A scan of ``tokedit/`` keeps every call that could run a file's code out."""

from __future__ import annotations

import ast
import contextlib
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from scale_helpers import (
    PickleBomb,
    invoke,
    pickle_bomb_bytes,
    write_custom_code_model,
    write_rows,
)

import tokedit
from tokedit.errors import InputError
from tokedit.io.manifest import manifest_path

TEXTS = ["To be, or not to be, that is the question.", "Shall I compare thee to a summer's day?"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("code-stays-out")


@pytest.fixture(scope="module")
def data(root) -> Path:
    write_rows(root / "data" / "a.jsonl", [{"text": t} for t in TEXTS])
    return root / "data"


@pytest.fixture(scope="module")
def scores(root, data, tiny_prior) -> Path:
    """``data`` scored by the plain tiny prior."""
    r = invoke("score", data, "--model", tiny_prior, "--out", root / "scores", "-q")
    assert r.returncode == 0, r.stderr
    return root / "scores"


@pytest.fixture(scope="module")
def untrusted(root, tiny_prior) -> tuple[Path, Path]:
    """A model that ships its own code, never trusted in this module: (directory, marker)."""
    marker = root / "untrusted-code-ran"
    return write_custom_code_model(tiny_prior, root / "custom-untrusted", marker), marker


@pytest.fixture(scope="module", autouse=True)
def modules_cache(root):
    """transformers copies the code it runs into its modules cache: one of this module's own
    (even where a broken tokedit ran the untrusted model's code)."""
    import transformers.dynamic_module_utils as dmu

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dmu, "HF_MODULES_CACHE", str(root / "hf-modules"))
        yield


def refused(r, model: Path, marker: Path) -> None:
    """Exit 2 naming the model and the flag, no traceback, and no line of its code run."""
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert str(model) in r.stderr and "ships its own Python code" in r.stderr, r.stderr
    assert "fix:" in r.stderr and "--trust-remote-code" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert not marker.exists(), marker.read_text()


# ---------------------------------------------------------------- a model's own code


@pytest.mark.parametrize("command", ["score", "edit --model", "edit --scores", "train --model"])
def test_a_model_with_its_own_code_is_refused_without_the_flag(
    tmp_path, data, scores, untrusted, command
):
    model, marker = untrusted
    out = tmp_path / "out"
    args = {
        "score": ("score", data, "--model", model, "--out", out),
        "edit --model": ("edit", data, "--model", model, "--out", out, "--p", "0.5"),
        # the scores of the same weights and vocabulary, decoded with the custom tokenizer
        "edit --scores": ("edit", data, "--scores", scores, "--tokenizer", model, "--out", out),
        "train --model": ("train", data, "--model", model, "--out", out, "--max-steps", "1"),
    }[command]
    refused(invoke(*args, "-q"), model, marker)
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*") if ".tokedit" not in p.parts)  # fmt: skip


@pytest.mark.parametrize(
    "loader",
    ["load_tokenizer", "model_positions", "model_vocab_size", "load_causal_lm", "hf backend",
     "load_prior", "score_dataset"],
)  # fmt: skip
def test_each_loader_refuses_the_models_code_without_trust(tmp_path, data, untrusted, loader):
    """Every way into the model, called as the library's callers do (no trust given): an
    InputError in the API's terms (``trust_remote_code=True``), and nothing imported."""
    from tokedit.scoring import hf
    from tokedit.scoring.options import ModelOptions
    from tokedit.scoring.run import load_backend

    model, marker = untrusted
    call = {
        "load_tokenizer": lambda: hf.load_tokenizer(str(model)),
        "model_positions": lambda: hf.model_positions(str(model)),
        "model_vocab_size": lambda: hf.model_vocab_size(str(model)),
        "load_causal_lm": lambda: hf.load_causal_lm(str(model)),
        "hf backend": lambda: load_backend(str(model), ModelOptions(device="cpu")),
        "load_prior": lambda: tokedit.load_prior(str(model), device="cpu"),
        "score_dataset": lambda: tokedit.score_dataset(
            str(data), str(tmp_path / "o"), model=str(model), progress=False
        ),
    }[loader]
    with pytest.raises(InputError) as e:
        call()
    assert str(model) in str(e.value) and "fix:" in str(e.value)
    assert "trust_remote_code=True" in str(e.value), str(e.value)
    assert not marker.exists(), marker.read_text()


def test_with_the_flag_the_models_code_runs_and_scores_like_its_weights(
    tmp_path, data, scores, tiny_prior
):
    """``--trust-remote-code`` runs the model's config, model and tokenizer code; the custom
    classes are Llama's with the same weights, so the scores are the plain prior's bytes.
    Editing from those scores needs the flag for their tokenizer; editing in one pass and
    training take it too."""
    marker = tmp_path / "trusted-code-ran"
    model = write_custom_code_model(tiny_prior, tmp_path / "custom-trusted", marker)
    out = tmp_path / "scores"
    r = invoke("score", data, "--model", model, "--out", out, "-q", "--trust-remote-code")
    assert r.returncode == 0, r.stderr
    ran = set(marker.read_text().split())
    assert ran == {"configuration_custom", "modeling_custom", "tokenization_custom"}
    assert (out / "a.parquet").read_bytes() == (scores / "a.parquet").read_bytes()
    edit = ("edit", data, "--scores", out, "--p", "0.5", "-q")
    refused_now = invoke(*edit, "--out", tmp_path / "e0")
    assert refused_now.returncode == 2 and "--trust-remote-code" in refused_now.stderr
    for args in (
        (*edit, "--out", tmp_path / "e1", "--trust-remote-code"),
        ("edit", data, "--model", model, "--p", "0.5", "--out", tmp_path / "e2", "-q",
         "--trust-remote-code"),
        ("train", data, "--model", model, "--out", tmp_path / "m", "--max-steps", "1",
         "--batch-size", "2", "--block-size", "16", "-q", "--trust-remote-code"),
    ):  # fmt: skip
        r = invoke(*args)
        assert r.returncode == 0, (args, r.stderr)
    assert (tmp_path / "m" / "modeling_custom.py").is_file()  # the trained model keeps its code


@pytest.mark.parametrize("command", ["score", "edit", "train"])
def test_every_command_that_loads_a_model_has_the_flag_and_its_help_names_the_risk(command):
    r = invoke(command, "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "--trust-remote-code" in text and "runs as you" in text and "refused" in text, text


def test_a_known_architecture_loads_with_transformers_code_and_ignores_the_files_beside_it(
    tmp_path, data, scores, tiny_prior
):
    """A model that names code of its own but is of a type transformers includes (llama, a
    tokenizer class it has) loads without the flag and without that code: the plain
    prior's scores."""
    marker = tmp_path / "code-ran"
    model = write_custom_code_model(tiny_prior, tmp_path / "custom-known", marker)
    for name, key, value in (
        ("config.json", "model_type", "llama"),
        ("tokenizer_config.json", "tokenizer_class", "TokenizersBackend"),
    ):
        config = json.loads((model / name).read_text())
        config[key] = value
        (model / name).write_text(json.dumps(config))
    out = tmp_path / "scores"
    r = invoke("score", data, "--model", model, "--out", out, "-q")
    assert r.returncode == 0, r.stderr
    assert not marker.exists(), marker.read_text()
    assert (out / "a.parquet").read_bytes() == (scores / "a.parquet").read_bytes()


# ---------------------------------------------------------------- pickles are data, never code


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("saved_by", ["torch.save", "pickle"])
def test_a_pickled_weights_file_that_would_run_code_is_never_unpickled(
    tmp_path, data, tiny_prior, saved_by
):
    marker = tmp_path / "unpickled"
    model = tmp_path / "bin-prior"
    shutil.copytree(tiny_prior, model)
    (model / "model.safetensors").unlink()
    weights = model / "pytorch_model.bin"
    if saved_by == "torch.save":  # a zip, as torch.save writes checkpoints
        torch.save({"model.embed_tokens.weight": PickleBomb(marker)}, weights)
    else:  # a bare pickle, as torch.save wrote them before 1.6
        weights.write_bytes(pickle_bomb_bytes(marker))
    r = invoke("score", data, "--model", model, "--out", tmp_path / "out", "-q")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert str(model) in r.stderr and "weights_only=True" in r.stderr and "fix:" in r.stderr
    assert "Traceback" not in r.stderr
    assert not marker.exists()
    with contextlib.suppress(Exception):  # the control: loaded as any pickle, it runs
        torch.load(weights, weights_only=False)
    assert marker.read_text() == "unpickled\n"


@pytest.fixture(scope="module")
def edited(root, data, scores) -> Path:
    r = invoke("edit", data, "--scores", scores, "--out", root / "edited", "--p", "0.5", "-q")
    assert r.returncode == 0, r.stderr
    return root / "edited"


@pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])  # ASCII and binary
@pytest.mark.parametrize("reader", ["score resume", "edit --scores", "edit resume", "report"])
def test_a_pickled_manifest_is_refused_naming_it_and_never_unpickled(
    tmp_path, data, scores, edited, tiny_prior, reader, protocol
):
    marker = tmp_path / "unpickled"
    s, e = tmp_path / "scores", tmp_path / "edited"
    shutil.copytree(scores, s)
    shutil.copytree(edited, e)
    bad = manifest_path(e if reader == "edit resume" else s)
    bad.write_bytes(pickle_bomb_bytes(marker, protocol))
    args = {
        "score resume": ("score", data, "--model", tiny_prior, "--out", s),
        "edit --scores": ("edit", data, "--scores", s, "--out", tmp_path / "e2", "--p", "0.5"),
        "edit resume": ("edit", data, "--scores", scores, "--out", e, "--p", "0.5"),
        "report": ("report", s, "--out", tmp_path / "r"),
    }[reader]
    r = invoke(*args, "-q")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert f"{bad}: corrupt manifest" in r.stderr and "fix:" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not marker.exists()
    pickle.loads(bad.read_bytes())  # the control: unpickled, the same bytes run
    assert marker.exists()


@pytest.mark.parametrize("reader", ["edit --scores", "report"])
def test_a_pickled_scores_shard_is_refused_naming_it_and_never_unpickled(
    tmp_path, data, scores, reader
):
    marker = tmp_path / "unpickled"
    s = tmp_path / "scores"
    shutil.copytree(scores, s)
    bad = s / "a.parquet"
    bad.write_bytes(pickle_bomb_bytes(marker))
    args = {
        "edit --scores": ("edit", data, "--scores", s, "--out", tmp_path / "e", "--p", "0.5"),
        "report": ("report", s, "--out", tmp_path / "r"),
    }[reader]
    r = invoke(*args, "-q")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert str(bad) in r.stderr and "fix:" in r.stderr and "Traceback" not in r.stderr
    assert not marker.exists()


@pytest.fixture(scope="module")
def report(root, scores) -> Path:
    assert invoke("report", scores, "--out", root / "report", "-q").returncode == 0
    return root / "report"


@pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])
def test_a_pickled_report_json_is_refused_naming_it_and_never_unpickled(tmp_path, report, protocol):
    from tokedit.analysis.report import load_report

    out = tmp_path / "report"
    shutil.copytree(report, out)
    assert load_report(out).corpora  # the report as written reads back
    marker = tmp_path / "unpickled"
    (out / "report.json").write_bytes(pickle_bomb_bytes(marker, protocol))
    with pytest.raises(InputError) as e:
        load_report(out)
    assert str(out / "report.json") in str(e.value) and "fix:" in str(e.value)
    assert not marker.exists()


# ---------------------------------------------------------------- the scan of tokedit/

# Calls that run code a file holds (by their qualified names, imports resolved).
UNPICKLERS = {
    f"{m}.{f}"
    for m in ("pickle", "cloudpickle", "dill", "joblib", "_pickle")
    for f in ("load", "loads", "Unpickler")
} | {"marshal.load", "marshal.loads", "pandas.read_pickle", "shelve.open"}
EVALUATORS = {"eval", "exec", "builtins.eval", "builtins.exec"}
YAML_UNSAFE = {"yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"}


def _imports(tree: ast.AST) -> dict[str, str]:
    """Local name -> qualified name of every import in a module (``np`` -> ``numpy``)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:  # import numpy as np: np is numpy
                    names[a.asname] = a.name
                else:  # import os.path: os is os
                    names[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _qualified(func: ast.expr, imports: dict[str, str]) -> str | None:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return None
    parts.append(imports.get(func.id, func.id))
    return ".".join(reversed(parts))


def _keyword(call: ast.Call, name: str):
    """The keyword ``name`` of ``call``: its constant value, ``...`` if not a constant, or
    ``None`` if absent (a ``**kwargs`` counts as absent)."""
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else ...
    return None


def _defaults_to_trust(node: ast.AST) -> bool:
    """A parameter or a (dataclass) field ``trust_remote_code`` whose default is True."""
    if isinstance(node, ast.AnnAssign | ast.Assign):
        targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
        named = any(isinstance(t, ast.Name) and t.id == "trust_remote_code" for t in targets)
        return named and isinstance(node.value, ast.Constant) and node.value.value is True
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
        a = node.args
        positional = a.posonlyargs + a.args
        pairs = list(zip(positional[len(positional) - len(a.defaults) :], a.defaults, strict=True))
        pairs += [(k, d) for k, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d is not None]
        return any(
            p.arg == "trust_remote_code" and isinstance(d, ast.Constant) and d.value is True
            for p, d in pairs
        )
    return False


def code_running_calls(source: str, imports: dict[str, str] | None = None) -> list[str]:
    """Where ``source`` could run a file's code or a model's: ``line: what``."""
    tree = ast.parse(source)
    imports = _imports(tree) if imports is None else imports
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
            if isinstance(node.value, ast.Constant) and node.value.value is True:
                found.append(f"{node.value.lineno}: trust_remote_code=True")
        if _defaults_to_trust(node):
            found.append(f"{node.lineno}: trust_remote_code defaults to True")
        if not isinstance(node, ast.Call):
            continue
        name = _qualified(node.func, imports) or ""
        last = name.rsplit(".", 1)[-1]
        if name in UNPICKLERS or name in EVALUATORS or name in YAML_UNSAFE:
            found.append(f"{node.lineno}: {name}")
        elif name == "torch.load" and _keyword(node, "weights_only") is not True:
            found.append(f"{node.lineno}: torch.load without weights_only=True")
        elif name in ("yaml.load", "yaml.load_all") and _keyword(node, "Loader") is None:
            found.append(f"{node.lineno}: {name} without a safe Loader")
        elif name in ("numpy.load",) and _keyword(node, "allow_pickle") not in (None, False):
            found.append(f"{node.lineno}: numpy.load(allow_pickle=True)")
        elif _keyword(node, "weights_only") is False:
            found.append(f"{node.lineno}: weights_only=False")
        elif last in ("from_pretrained", "from_config") and _keyword(node, "trust_remote_code") in (None,):  # fmt: skip
            # left out, transformers asks on a terminal (and waits) whether to run the code
            found.append(f"{node.lineno}: {last} without trust_remote_code")
    return found


def test_no_call_in_tokedit_runs_a_files_code():
    """No unpickling, no eval / exec, no unsafe YAML, torch.load only of tensors, no
    ``trust_remote_code=True`` and every transformers load given ``trust_remote_code``
    (left out, it prompts on a terminal). Ray's pickling of tokedit's own steps between
    its processes is not a reader of user files, and is not a call here."""
    package = Path(tokedit.__file__).parent
    found = [
        f"{path.relative_to(package)}:{line}"
        for path in sorted(package.rglob("*.py"))
        for line in code_running_calls(path.read_text())
    ]
    assert not found, found


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle\npickle.load(f)",
        "import pickle as p\np.loads(b)",
        "from pickle import loads\nloads(b)",
        "import cloudpickle\ncloudpickle.loads(b)",
        "import torch\ntorch.load(path)",
        "import torch\ntorch.load(path, weights_only=False)",
        "eval(text)",
        "exec(text)",
        "import yaml\nyaml.load(text)",
        "import yaml\nyaml.unsafe_load(text)",
        "import numpy as np\nnp.load(path, allow_pickle=True)",
        "from transformers import AutoConfig\nAutoConfig.from_pretrained(m)",
        "AutoModelForCausalLM.from_pretrained(m, trust_remote_code=True)",
        "load_causal_lm(m, trust_remote_code=True)",
        "def load(m, *, trust_remote_code=True): ...",
        "class O:\n    trust_remote_code: bool = True",
        "AutoModelForCausalLM.from_pretrained(m, trust_remote_code=False, weights_only=False)",
    ],
)
def test_the_scan_finds_each_call_that_would_run_code(snippet):
    assert code_running_calls(snippet), snippet


def test_the_scan_passes_the_safe_forms():
    safe = (
        "import torch, yaml, numpy as np\n"
        "torch.load(p, weights_only=True)\nyaml.load(t, Loader=yaml.SafeLoader)\n"
        "yaml.safe_load(t)\nnp.load(p)\nnp.load(p, allow_pickle=False)\n"
        "AutoTokenizer.from_pretrained(m, trust_remote_code=trust)\n"
        "AutoConfig.from_pretrained(m, trust_remote_code=False)\n"
        "import pickle\ne = pickle.UnpicklingError\n"
        "def load(m, *, trust_remote_code=False): ...\n"
        "class O:\n    trust_remote_code: bool = False\n"
    )
    assert code_running_calls(safe) == []
