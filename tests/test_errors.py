"""Errors speak in the caller's terms: parameters to Python (``batch_rows=0``), flags to the
command line (``--batch-rows 0``), from one message (:func:`tokedit.errors.arg`) and one
mapping of parameter names to flags (:data:`tokedit.cli.flags.FLAGS`)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import tokedit
from tokedit.cli import main
from tokedit.cli.flags import FLAGS
from tokedit.editor.options import parse_ps
from tokedit.errors import InputError, OutputError, TokeditError, arg, render
from tokedit.scoring.options import ScoreOptions

ROOT = Path(tokedit.__file__).parent

# ---------------------------------------------------------------- render


@pytest.mark.parametrize(
    ("value", "python", "cli"),
    [
        (0, "batch_rows=0", "--batch-rows 0"),
        (1.5, "batch_rows=1.5", "--batch-rows 1.5"),
        ("auto", "batch_rows='auto'", "--batch-rows auto"),
        ("a b", "batch_rows='a b'", "--batch-rows 'a b'"),  # quoted for a shell
        ((0.9, 0.99), "batch_rows=(0.9, 0.99)", "--batch-rows 0.9,0.99"),
        (True, "batch_rows=True", "--batch-rows"),
        (False, "batch_rows=False", "--no-batch-rows"),
    ],
)
def test_render_value_types(value, python, cli):
    text = f"{arg('batch_rows', value)} is wrong"
    assert render(text) == f"{python} is wrong"
    assert render(text, FLAGS) == f"{cli} is wrong"


def test_render_without_value_is_the_name_or_the_flag():
    text = f"leave {arg('text_column')} out"
    assert render(text) == "leave text_column out"
    assert render(text, FLAGS) == "leave --text-column out"


def test_render_uses_the_flag_of_flags_and_dashes_otherwise():
    assert "shard_index" not in FLAGS
    assert render(arg("shard_index", 3), FLAGS) == "--shard-index 3"
    assert render(arg("shard_index", 3), {"shard_index": "--slice"}) == "--slice 3"
    assert FLAGS["scores_dir"] == "--scores"
    assert render(arg("scores_dir", "S"), FLAGS) == "--scores S"
    assert render(arg("scores_dir", "S")) == "scores_dir='S'"


def test_error_renders_message_and_remedy_both_ways():
    e = InputError(f"{arg('p', 1.5)} is outside (0, 1)", remedy=f"e.g. {arg('p', 0.99)}")
    assert str(e) == e.render() == "p=1.5 is outside (0, 1)\n  fix: e.g. p=0.99"
    assert e.render(FLAGS) == "--p 1.5 is outside (0, 1)\n  fix: e.g. --p 0.99"
    assert "\x1f" not in str(e) and "\x1e" not in e.render(FLAGS)


# ---------------------------------------------------------------- the same mistake, two callers


def test_library_call_names_parameters(tmp_path):
    with pytest.raises(InputError) as e:
        tokedit.edit_dataset(
            str(tmp_path / "data"), str(tmp_path / "out"), scores_dir=str(tmp_path), batch_rows=0
        )
    assert "batch_rows=0" in str(e.value) and "--" not in str(e.value)
    with pytest.raises(InputError) as e:
        ScoreOptions(bos="sometimes")
    assert str(e.value).startswith("bos='sometimes' is not one of") and "--" not in str(e.value)
    with pytest.raises(InputError) as e:
        parse_ps("1.5")
    assert str(e.value).startswith("p=1.5 is outside (0, 1)") and "--" not in str(e.value)


def test_cli_names_flags(tmp_path):
    data, scores = tmp_path / "data", tmp_path / "scores"
    data.mkdir()
    scores.mkdir()
    args = ["edit", str(data), "--scores", str(scores), "--out", str(tmp_path / "o"), "-q"]
    r = CliRunner().invoke(main, [*args, "--p", "1.5"])
    assert r.exit_code == 2, r.output
    assert "error: --p 1.5 is outside (0, 1)" in r.output and "fix: " in r.output
    assert "p=" not in r.output
    r = CliRunner().invoke(main, [*args, "--batch-rows", "0"])
    assert r.exit_code == 2, r.output
    assert "--batch-rows 0 must be >= 1" in r.output and "batch_rows" not in r.output


def test_cli_and_library_name_a_renamed_parameter(tmp_path):
    """``out_dir`` is ``--out`` (FLAGS), not ``--out-dir``."""
    data, scores = tmp_path / "data", tmp_path / "scores"
    data.mkdir()
    scores.mkdir()
    (data / "a.jsonl").write_text('{"text": "To be"}\n')
    r = CliRunner().invoke(main, ["edit", str(data), "--scores", str(scores), "--out", str(scores)])
    assert r.exit_code == 2, r.output
    assert f"error: --out {scores} is the scores directory" in r.output
    assert "fix: choose another --out\n" in r.output and "out_dir" not in r.output
    with pytest.raises(InputError) as e:
        tokedit.edit_dataset(str(data), str(scores), scores_dir=str(scores))
    assert (
        str(e.value)
        == f"out_dir={str(scores)!r} is the scores directory\n  fix: choose another out_dir"
    )


# ---------------------------------------------------------------- no flag in library messages

ERRORS = {cls.__name__ for cls in (TokeditError, InputError, OutputError)}
FLAG = re.compile(r"--[a-z]")
COMMAND = re.compile(r"`(?:tokedit|ray|pip) [^`]*`")  # a command line to run


def _texts(node: ast.AST, constants: dict[str, ast.AST]) -> list[str]:
    """The literal texts of a message expression: each string constant, each f-string with
    ``{}`` where its values go, and the module constants it names, recursively."""
    if isinstance(node, ast.Constant):
        return [node.value] if isinstance(node.value, str) else []
    if isinstance(node, ast.JoinedStr):
        parts = [v.value if isinstance(v, ast.Constant) else "{}" for v in node.values]
        return ["".join(parts)] + [
            t
            for v in node.values
            if isinstance(v, ast.FormattedValue)
            for t in _texts(v, constants)
        ]
    if isinstance(node, ast.Name) and node.id in constants:
        return _texts(constants[node.id], constants)
    return [t for child in ast.iter_child_nodes(node) for t in _texts(child, constants)]


def library_messages():
    """``(file:line, text)`` of every literal text of a message or remedy of the library.

    Walks every module of ``tokedit/`` but ``tokedit/cli/`` (which speaks flags). A message
    is an argument of a call of ``InputError`` / ``OutputError`` / ``TokeditError``: its
    positional arguments and its ``remedy=``, with the module-level constants they name
    (``remedy=RESCORE_REMEDY``)."""
    for path in sorted(ROOT.rglob("*.py")):
        if "cli" in path.relative_to(ROOT).parts:
            continue
        tree = ast.parse(path.read_text(), str(path))
        constants = {
            t.id: stmt.value
            for stmt in tree.body
            if isinstance(stmt, ast.Assign)
            for t in stmt.targets
            if isinstance(t, ast.Name)
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = (
                f.id
                if isinstance(f, ast.Name)
                else f.attr
                if isinstance(f, ast.Attribute)
                else None
            )
            if name not in ERRORS:
                continue
            values = [*node.args, *(k.value for k in node.keywords if k.arg == "remedy")]
            for value in values:
                for text in _texts(value, constants):
                    yield f"{path.relative_to(ROOT.parent)}:{node.lineno}", text


def flags_named(text: str) -> list[str]:
    """The flags a message text names outside a quoted command.

    The rule: a ``--`` followed by a lower-case letter is a flag, unless it is inside a
    backquoted command line that starts with ``tokedit``, ``ray`` or ``pip`` and a space
    ("`tokedit score --top-k 8`", "`ray start --head`"): a command the user would run,
    the same for every caller. Anything else names a setting, and must do it with
    :func:`~tokedit.errors.arg` (which the walk above sees as a ``{}``), so that Python
    sees the parameter and the command line its flag."""
    return FLAG.findall(COMMAND.sub("", text))


def test_flags_named_rule():
    assert flags_named("pass --top-k 8") == ["--t"]
    assert flags_named("rescore with `tokedit score --top-k {}` first") == []
    assert flags_named("run `ray start --head`") == []
    assert flags_named("pass `--top-k 8`") == ["--t"]  # quoted, but not a command
    assert flags_named("rerun `tokedit score` (same --text-column)") == ["--t"]
    assert flags_named("pass {} or less") == []


def test_no_library_message_names_a_flag():
    found = list(library_messages())
    assert len(found) > 200, "the walk finds the messages"
    bad = [f"{where}: {text!r}" for where, text in found if flags_named(text)]
    assert not bad, "library messages name flags (use tokedit.errors.arg):\n" + "\n".join(bad)
