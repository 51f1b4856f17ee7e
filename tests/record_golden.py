"""Record the goldens of tests/test_golden.py: the explicit command, never run by a test.

    python tests/record_golden.py                 # edits and report from the committed scores
    python tests/record_golden.py --rescore       # also rescore with the committed prior
    python tests/record_golden.py --prior DIR     # commit DIR as the prior (implies --rescore)
    python tests/record_golden.py --new-data      # rewrite the corpus from the plays (implies --rescore)

It (re)writes tests/golden/ (data/, prior/, scores/) and tests/golden.json, and prints which
files and hashes changed. Say in the commit why they changed. ``DIR`` may be the test
fixture's tiny prior (``~/.cache/tokedit/fixtures/tiny-prior-<key>``, made by any test run
that uses ``tiny_prior``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS.parent), str(TESTS)]  # this checkout's tokedit, then the test helpers

import test_golden as g  # noqa: E402

PRIOR_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "tokenizer_config.json", "tokedit_train.json")  # fmt: skip
PLAYS, CHARS, SHARDS = ("hamlet", "sonnets", "tempest"), 6_000, 2


def file_hashes(top: Path) -> dict[str, str]:
    return {
        p.relative_to(top).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(top.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def write_data(out: Path) -> None:
    from tokedit.demo import read_plays, write_demo_corpus

    plays = read_plays()
    write_demo_corpus(out, plays={n: plays[n][:CHARS] for n in PLAYS}, n_shards=SHARDS)


def copy_prior(src: Path, out: Path) -> None:
    out.mkdir(parents=True)
    for name in PRIOR_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
    missing = [
        n for n in ("config.json", "model.safetensors", "tokenizer.json") if not (out / n).is_file()
    ]
    if missing:
        sys.exit(f"{src}: not a saved model (no {', '.join(missing)})")


def score(work: Path, new: Path) -> None:
    """Score new/data with new/prior into new/scores; the input's path made machine-free."""
    root = g.stage(work / "score", "data", "prior", weights=True, inputs=new)
    g.run_steps(root, [g.SCORE_STEP])
    manifest_path = root / "scores/.tokedit/manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["info"]["input"] = "data"  # informational; the editor does not read it
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    shutil.copytree(root / "scores", new / "scores", ignore=shutil.ignore_patterns("*.lock"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python tests/record_golden.py",
        description=__doc__.split("\n\n")[0] + " Rewrites tests/golden/ and tests/golden.json.",
    )
    ap.add_argument("--rescore", action="store_true", help="rescore the corpus with the prior")
    ap.add_argument("--prior", type=Path, help="commit this saved model as the prior (rescores)")
    ap.add_argument("--new-data", action="store_true", help="rewrite the corpus (rescores)")
    ap.add_argument("--dry-run", action="store_true", help="print what would change, write nothing")
    args = ap.parse_args(argv)

    inputs = g.INPUTS
    before = file_hashes(inputs) if inputs.is_dir() else {}
    want = json.loads(g.GOLDEN.read_text()) if g.GOLDEN.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        work, new = Path(tmp), Path(tmp) / "golden"
        new.mkdir()
        if args.new_data or not (inputs / "data").is_dir():
            write_data(new / "data")
        else:
            shutil.copytree(inputs / "data", new / "data")
        if args.prior is not None:
            copy_prior(args.prior, new / "prior")
        elif (inputs / "prior").is_dir():
            shutil.copytree(inputs / "prior", new / "prior")
        else:
            sys.exit("no committed prior: pass --prior DIR (e.g. the fixture's tiny prior)")
        rescore = args.rescore or args.prior is not None or args.new_data
        if rescore or not (inputs / "scores").is_dir():
            score(work, new)
        else:
            shutil.copytree(inputs / "scores", new / "scores")
        got = g.edit_and_report(g.stage(work / "edit", "data", "scores", "prior", inputs=new))

        after = file_hashes(new)
        changed_files = [
            f for f in sorted(set(before) | set(after)) if before.get(f) != after.get(f)
        ]
        changed = g.changed_digests(got, want)
        for what, names in (("tests/golden/", changed_files), ("tests/golden.json", changed)):
            print(f"{what}: {len(names)} changed" + "".join(f"\n  {n}" for n in names))
        if args.dry_run or not (changed_files or changed):
            return 0
        shutil.rmtree(inputs, ignore_errors=True)
        shutil.copytree(new, inputs)
        g.GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        print("written; say in the commit why these changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
