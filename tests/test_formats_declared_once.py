"""Formats declared once (issue 25, item 1): the owner of each on-disk format declares its
column and file names as constants, and every other module uses those constants.

The test parses every module of ``tokedit/`` and fails on a ``str`` constant equal to a known
name anywhere outside the module that owns it. The names are taken from the owners, so the
list cannot drift from the formats:

* the columns of a scores shard, ``SCORES_SCHEMA.names`` (``io/scores_dir.py``);
* the provenance columns of an edited shard, ``PROVENANCE_COLUMNS`` (``io/edited_dir.py``);
* the manifest's file names ``META_DIR``, ``MANIFEST_NAME``, ``LOCK_NAME`` (``io/manifest.py``);
* the one shard of a dataset written from texts, ``DOCS_SHARD`` (``io/texts.py``).

Generic names are handled as follows:

* ``id`` (a scores column) is not checked: it is also the default of the user's
  ``--id-column``, the id column of the tables the Python API builds from texts, and a key of
  JSON records (report examples, n-gram lists), so the string alone says nothing about the
  format it names. A scores reader that spells it out still lists it next to other scores
  columns, which are checked.
* ``status`` is checked everywhere: in tokedit it names only the scores column (the values
  of a status are ``io/read.py``'s ``STATUS_*``).
* ``text`` is no owner's name: it is the user's column (``--text-column``), left to them.

A place that spells a known name for something else is allowed in :data:`ALLOWED`, by module,
function and name, with its reason; an entry that no longer matches fails too, so the list
stays short and true.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import tokedit
from tokedit.io import edited_dir, manifest, scores_dir, texts

PACKAGE = Path(tokedit.__file__).parent

# Names not checked outside their owner, and why (see the module docstring).
GENERIC = {"id": "also the user's --id-column default and a key of JSON records"}

# (module, function, name) -> why that string there is not the format's name.
ALLOWED = {
    (
        "tokedit/analysis/probs.py",
        "ProbabilityAccumulator.summary",
        "mean_logprob",
    ): "a key of the probability summary (report JSON): the mean over tokens, not the column",
    (
        "tokedit/experiments/metrics.py",
        "probability_histogram",
        "mean_logprob",
    ): "the same summary key, read from the summary and passed on",
}


def _rel(module) -> str:
    return Path(module.__file__).relative_to(PACKAGE.parent).as_posix()


def owned_names() -> dict[str, str]:
    """Each known name -> the module (``tokedit/...py``) that owns it."""
    owners = {
        _rel(scores_dir): scores_dir.SCORES_SCHEMA.names,
        _rel(edited_dir): edited_dir.PROVENANCE_COLUMNS,
        _rel(manifest): (manifest.META_DIR, manifest.MANIFEST_NAME, manifest.LOCK_NAME),
        _rel(texts): (texts.DOCS_SHARD,),
    }
    return {name: owner for owner, names in owners.items() for name in names}


def string_constants(path: Path) -> list[tuple[str, str, int]]:
    """(enclosing function's qualified name, string, line) of every ``str`` constant."""
    found = []

    def visit(node: ast.AST, scope: tuple[str, ...]) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            scope = (*scope, node.name)
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append((".".join(scope), node.value, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child, scope)

    visit(ast.parse(path.read_text(), str(path)), ())
    return found


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_known_names_appear_only_in_their_owner():
    names = owned_names()
    used_allowances, stray = set(), []
    for path in modules():
        rel = path.relative_to(PACKAGE.parent).as_posix()
        for scope, value, line in string_constants(path):
            owner = names.get(value)
            if owner is None or owner == rel or value in GENERIC:
                continue
            if (rel, scope, value) in ALLOWED:
                used_allowances.add((rel, scope, value))
                continue
            stray.append(f'{rel}:{line}: "{value}" (declared in {owner}: use its constant)')
    assert not stray, "format names spelled outside their owner:\n" + "\n".join(stray)
    stale = set(ALLOWED) - used_allowances
    assert not stale, f"ALLOWED entries that match nothing any more: {sorted(stale)}"


def test_each_owner_writes_each_name_once():
    """The constant is the one place the string is written (the schema and the tuples of
    columns readers need are built from the constants)."""
    for name, owner in owned_names().items():
        path = PACKAGE.parent / owner
        count = Counter(value for _, value, _ in string_constants(path))[name]
        assert count == 1, f'{owner} writes "{name}" {count} times'
