"""GGUF priors: turn a ``.gguf`` file into a ``save_pretrained`` directory once, then reuse it.

transformers reads GGUF files (``from_pretrained(dir, gguf_file=name)``) by converting the
tokenizer (~30 s for a 262k vocabulary) and dequantizing every tensor to float (~60 s for
270M parameters on 2 cores). tokedit does that once per file and caches the result, keyed by
the file's sha256, as a plain ``save_pretrained`` directory: every later load, in any
process or Ray actor, takes seconds.

transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the weights are moved
into a model built from the same config without ``quantization_config``; the conversion
then reloads what it wrote and checks its logits against the GGUF-loaded model's on a probe
(they must be identical), so a faulty conversion never reaches the cache.

A converted directory is complete only once its ``tokedit-prior.json`` exists (written
last, atomically); a conversion that dies leaves a hidden temporary directory that the next
one removes.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
from pathlib import Path

from tokedit.errors import InputError, arg
from tokedit.io.storage import file_sha256 as sha256_of_file

logger = logging.getLogger(__name__)

PRIOR_INFO = "tokedit-prior.json"
PROBE_TEXT = "Shall I compare thee to a summer's day? Thou art more lovely and more temperate."


def cache_dir() -> Path:
    """tokedit's cache (``$TOKEDIT_CACHE``, default ``~/.cache/tokedit``)."""
    return Path(os.environ.get("TOKEDIT_CACHE", Path.home() / ".cache" / "tokedit")).expanduser()


@functools.lru_cache(maxsize=64)
def _sha256_at(path: str, state: tuple[int, ...]) -> str:
    return sha256_of_file(path)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, computed once per state of the file in this process: its size,
    mtime, inode and ctime (every write and every ``os.utime`` moves the ctime, so bytes
    rewritten with the old size and mtime put back are hashed again)."""
    st = os.stat(path)
    state = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    return _sha256_at(str(Path(path).resolve()), state)


def read_prior_info(model_dir: str | os.PathLike) -> dict | None:
    """The conversion record of a directory tokedit converted or fetched, else None."""
    path = Path(model_dir) / PRIOR_INFO
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def gguf_file_in(directory: Path) -> Path | None:
    """The one ``.gguf`` file of a directory (None if it has none; an error if several)."""
    found = sorted(directory.glob("*.gguf"))
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise InputError(
            f"{directory} holds several GGUF files ({names}); tokedit cannot tell which one is the prior",
            remedy=f"pass the file itself, e.g. {arg('model', str(found[0]))}",
        )
    return found[0] if found else None


def resolve_model(model: str) -> str:
    """What to hand transformers for ``model``: a GGUF file (or a directory holding exactly
    one, without a ``config.json``) becomes its converted directory, converted on first use;
    anything else (a ``save_pretrained`` directory, a hub name) is returned unchanged."""
    path = Path(model).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return model
        found = gguf_file_in(path)
        if found is None:
            return model
        path = found
    if path.suffix != ".gguf" or not path.is_file():
        return model
    sha = file_sha256(path)
    beside = read_prior_info(path.parent)
    if beside and beside.get("gguf_sha256") == sha and (path.parent / "config.json").is_file():
        return str(path.parent)
    target = cache_dir() / "gguf" / sha[:16]
    info = read_prior_info(target)
    if not (info and info.get("gguf_sha256") == sha):
        convert_gguf(path, target, sha256=sha)
    return str(target)


def model_source(model: str) -> dict | None:
    """Where a prior's weights came from, for manifests: the GGUF file's sha256 and
    quantization type when ``model`` resolves to a converted GGUF prior, else None."""
    info = read_prior_info(resolve_model(model))
    if not info:
        return None
    return {k: info.get(k) for k in ("gguf_sha256", "quantization", "gguf_file")}


def gguf_metadata(path: Path) -> dict:
    """Architecture, name, licence and quantization type from the GGUF header."""
    from gguf import GGUFReader, LlamaFileType

    reader = GGUFReader(str(path))

    def field(key):
        f = reader.fields.get(key)
        return None if f is None else f.parts[f.data[0]]

    def text(key):
        v = field(key)
        return None if v is None else bytes(v).decode("utf-8", "replace")

    file_type = field("general.file_type")
    quant = None
    if file_type is not None:
        try:
            quant = LlamaFileType(int(file_type[0])).name.removeprefix("MOSTLY_")
        except ValueError:
            quant = f"file_type {int(file_type[0])}"
    return {
        "architecture": text("general.architecture"),
        "name": text("general.name"),
        "license": text("general.license"),
        "quantization": quant,
        "tensors": len(reader.tensors),
    }


def convert_gguf(
    gguf_path: str | os.PathLike, dest: str | os.PathLike, *, sha256: str | None = None, log=None
) -> Path:
    """Convert ``gguf_path`` into the ``save_pretrained`` directory ``dest`` (which may
    already hold the GGUF file itself) and return ``dest``."""
    log = log or logger.info
    gguf_path, dest = Path(gguf_path).resolve(), Path(dest)
    _require_gguf(gguf_path)
    sha256 = sha256 or file_sha256(gguf_path)
    tmp = _fresh_tmp(dest)
    try:
        meta = gguf_metadata(gguf_path)
        log(f"converting {gguf_path.name} ({meta['quantization']}) into {dest} (once)")
        tokenizer, loaded = _load_gguf(gguf_path, meta)
        _save_converted(_dequantized(loaded), tokenizer, tmp, dest)
        diff = _probe_difference(loaded, tmp, tokenizer)
        if diff != 0.0:
            raise InputError(
                f"{gguf_path}: the converted model's logits differ from the GGUF model's by {diff:.3g}",
                remedy="report this with the file's name; pass a save_pretrained directory instead",
            )
        info = {
            "format": "gguf",
            "gguf_file": gguf_path.name,
            "gguf_sha256": sha256,
            **meta,
            "probe_max_abs_logit_difference": diff,
            "converted_with": {"transformers": _version("transformers"), "gguf": _version("gguf")},
        }
        _publish(tmp, dest, info)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _require_gguf(gguf_path: Path) -> None:
    try:
        import gguf  # noqa: F401  (transformers needs it; say so before it fails deep inside)
    except ImportError as e:
        raise InputError(
            f"{gguf_path}: reading GGUF files needs the 'gguf' package",
            remedy="pip install gguf",
        ) from e


def _fresh_tmp(dest: Path) -> Path:
    """``dest`` made, the temporary directories of dead conversions into it removed, and
    this process's own temporary directory (empty) named."""
    dest.mkdir(parents=True, exist_ok=True)
    for stale in dest.glob(".converting-*"):
        if not _pid_alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = dest / f".converting-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def _load_gguf(gguf_path: Path, meta: dict):
    """The tokenizer and the (dequantized, float32) model transformers reads from the file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, name = str(gguf_path.parent), gguf_path.name
    try:
        # A GGUF file holds weights and metadata, never code: nothing to trust.
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name, trust_remote_code=False)
        loaded = AutoModelForCausalLM.from_pretrained(
            where, gguf_file=name, dtype=torch.float32, trust_remote_code=False
        )
    except Exception as e:
        raise InputError(
            f"{gguf_path}: transformers cannot load this GGUF file: {e}",
            remedy="check that transformers supports its architecture "
            f"({meta['architecture']}) for GGUF, or convert it with the tools of its publisher",
        ) from e
    return tokenizer, loaded


def _dequantized(loaded):
    """A plain float32 model of the same config (no quantization config) holding ``loaded``'s
    weights (assigned, not copied)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(
            config, dtype=torch.float32, trust_remote_code=False
        )
    plain.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    plain.eval()
    return plain


def _save_converted(plain, tokenizer, tmp: Path, dest: Path) -> None:
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    except OSError as e:
        raise InputError(
            f"could not write the converted model into {dest}: {e}",
            remedy="free disk space there (about 4 bytes per parameter) or set $TOKEDIT_CACHE elsewhere",
        ) from e


def _publish(tmp: Path, dest: Path, info: dict) -> None:
    """Move the converted files into ``dest``, then write its prior info: the directory is
    complete only once that file is there."""
    for item in tmp.iterdir():
        os.replace(item, dest / item.name)
    tmp_info = dest / f".{PRIOR_INFO}.{os.getpid()}"
    tmp_info.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    os.replace(tmp_info, dest / PRIOR_INFO)  # complete only from here on


def _probe_difference(loaded, saved_dir: Path, tokenizer) -> float:
    """Max |logit difference| between the GGUF-loaded model and the saved directory."""
    import torch
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(
        saved_dir, dtype=torch.float32, trust_remote_code=False
    ).eval()
    ids = torch.tensor([tokenizer(PROBE_TEXT)["input_ids"]])
    with torch.inference_mode():
        a = loaded.eval()(ids).logits
        b = reloaded(ids).logits
    return float((a - b).abs().max())


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
