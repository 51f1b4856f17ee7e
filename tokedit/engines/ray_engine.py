"""``--engine ray``: run the per-shard step of a command in a pool of Ray Data actors.

The dataset is the list of shards still to do (``ray.data.from_items``, one item per shard);
``map_batches`` sends them one at a time (``batch_size=1``) to a fixed pool of actors, each
of which loads the model once and calls the SAME per-shard callable as ``--engine local``
(for ``score``: :class:`tokedit.scoring.run.ShardScorer`). That callable reads the shard,
writes its output with tokedit's own writers and paths (temp file, fsync, rename; on an object
store, upload to a temporary key and copy: the actor reads and writes the store itself, the
driver never moves shard bytes) and returns the shard's manifest entry. Ray Data never writes a file: the driver iterates over the
results as they arrive and records each entry in the manifest, so the output layout, the
manifest, resume after a crash and the refusal of other options are those of the local
engine, and the output bytes are identical.

Resources (see the Ray Data pitfall in DESIGN.md and :func:`default_resources`): where the
cluster has GPUs, one actor per GPU (1 GPU and 1 CPU each). On CPUs, one CPU of the cluster
is always left free for Ray Data's own tasks (a pool that claims every CPU starves them and
the run hangs), and each actor gets as many CPUs, and torch threads, as the local engine
would use, because torch's CPU results can differ in the last bit between thread counts.
The local instance started without ``--ray-address`` advertises one CPU more than the
machine has cores: that is the CPU kept free, and one actor gets all the cores.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any

from tokedit.errors import InputError, OutputError, TokeditError
from tokedit.io.manifest import Manifest
from tokedit.io.shards import Shard
from tokedit.io.storage import ENV_OPTIONS, as_path, set_storage_options
from tokedit.io.write import remove_stale_temp_files

INSTALL_HINT = "pip install 'tokedit[ray]'   (installs ray[data])"


def import_ray():
    """Import Ray and Ray Data, or explain how to install them."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise InputError(
            f"--engine ray needs Ray Data, which cannot be imported here ({e})",
            remedy=INSTALL_HINT + ", or use --engine local",
        ) from e
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[Any]:
    """Connect to the cluster at ``address``, or start a local Ray instance for this run.

    A Ray instance already initialised in this process (for example by a test fixture or
    by the caller's own code) is used as it is and left running.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    # Ray's C++ core logs an error line to stderr whenever Ray Data starts an actor pool
    # (https://github.com/ray-project/ray/issues/53727); it is noise for tokedit's users.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.ERROR,
    }
    try:
        if address:
            check_reachable(address)
            ray.init(address=address, **kwargs)
        else:
            # "local": a new instance, never a cluster some `ray start` left on this machine.
            # One logical CPU more than the cores: kept free for Ray Data's own tasks (see
            # default_resources), while the actors use every core.
            num_cpus = num_cpus or (os.cpu_count() or 1) + 1
            ray.init(address="local", num_cpus=num_cpus, **kwargs)
    except (ConnectionError, TimeoutError, ValueError, RuntimeError) as e:
        raise InputError(
            f"cannot start or reach Ray{f' at {address}' if address else ''}: {e}",
            remedy="check --ray-address (host:port of a running head node, or 'auto'), "
            "or leave it out to start a local instance",
        ) from e
    try:
        yield ray
    finally:
        ray.shutdown()


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast on a ``host:port`` nobody listens on (``ray.init`` retries for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return  # "auto", "ray://...": left to Ray
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise InputError(
            f"cannot reach a Ray cluster at {address} ({e.strerror or e})",
            remedy="start one with `ray start --head` and pass the address it prints, "
            "or leave --ray-address out to start a local instance",
        ) from e


def default_resources(
    cluster: dict[str, float],
    num_actors: int | None,
    *,
    threads: int = 1,
    max_node_cpus: float | None = None,
) -> tuple[int, dict, int | None]:
    """Pool size, per-actor resources and torch threads per actor.

    ``cluster`` is ``ray.cluster_resources()``; ``threads`` the torch thread count of the
    local engine (this process); ``max_node_cpus`` the CPUs of the largest node.

    With GPUs: one actor per GPU (1 GPU, 1 CPU each; torch threads left alone). CPU only:
    one CPU of the cluster always stays free for Ray Data's own tasks; an actor asks for as
    many CPUs as the local engine has threads (so that it computes exactly as a local run:
    on CPU, torch results can differ in the last bit between thread counts), at most what
    the largest node can give, and runs torch with that many threads. An explicit
    ``num_actors`` that does not fit gets fewer CPUs (threads) per actor.

    >>> default_resources({"CPU": 3.0}, None, threads=2, max_node_cpus=3)
    (1, {'num_cpus': 2}, 2)
    >>> default_resources({"CPU": 3.0}, 2, threads=2, max_node_cpus=3)
    (2, {'num_cpus': 1}, 1)
    >>> default_resources({"CPU": 64.0, "GPU": 8.0}, None, threads=16, max_node_cpus=64)
    (8, {'num_cpus': 1, 'num_gpus': 1}, None)
    """
    cpus = int(cluster.get("CPU", 1))
    gpus = int(cluster.get("GPU", 0))
    if gpus >= 1:
        return num_actors or gpus, {"num_cpus": 1, "num_gpus": 1}, None
    spare = max(1, cpus - 1)
    node = int(max_node_cpus) if max_node_cpus else cpus
    per = max(1, min(threads, node - 1 if node > 1 else 1, spare))
    if num_actors:
        per = max(1, min(per, spare // num_actors))
    return num_actors or max(1, spare // per), {"num_cpus": per}, per


class _ShardActorBase:
    """A Ray Data actor: runs ``fn`` (the per-shard callable) on one shard per call."""

    fn: Callable[[Shard], dict]
    threads: int | None = None  # torch intra-op threads (CPU pools), set once per actor
    _threads_set = False
    # The driver's storage options (--storage-options) for s3:// ... outputs and inputs: the
    # actors read their shards from and write them to the store themselves.
    storage_env: str | None = None

    def __call__(self, batch: dict) -> dict:
        if self.threads and not self._threads_set:
            import torch

            torch.set_num_threads(self.threads)
            self._threads_set = True
        if self.storage_env and os.environ.get(ENV_OPTIONS) != self.storage_env:
            set_storage_options(self.storage_env)
        out: dict[str, list] = {"rel": [], "entry": [], "error": [], "info": []}
        for root, rel, fmt in zip(batch["root"], batch["rel"], batch["fmt"], strict=True):
            shard = Shard(as_path(str(root)), str(rel), str(fmt))
            entry, error, info = {}, "", {}
            try:
                entry = self.fn(shard)
                info_of = getattr(self.fn, "info", None)
                info = info_of() if callable(info_of) else {}
            except TokeditError as e:  # sent back as data: the driver re-raises it as is
                error = json.dumps(
                    {"type": type(e).__name__, "message": e.message, "remedy": e.remedy}
                )
            out["rel"].append(shard.rel)
            out["entry"].append(json.dumps(entry))
            out["error"].append(error)
            out["info"].append(json.dumps(info))
        return out


def _actor_class(fn: Callable[[Shard], dict], threads: int | None) -> type:
    # The callable travels inside the (pickled) class rather than as a constructor argument,
    # so Ray keeps no constructor arguments in the object store for actor restarts.
    attrs = {"fn": fn, "threads": threads, "storage_env": os.environ.get(ENV_OPTIONS)}
    return type("ShardActor", (_ShardActorBase,), attrs)


def _local_threads() -> int:
    try:
        import torch
    except ImportError:
        return 1
    return torch.get_num_threads()


def _reraise(error_json: str) -> None:
    e = json.loads(error_json)
    cls = {"InputError": InputError, "OutputError": OutputError}.get(e["type"], TokeditError)
    raise cls(e["message"], remedy=e["remedy"])


def run_shards_ray(
    shards: list[Shard],
    manifest: Manifest,
    process_shard: Callable[[Shard], dict[str, Any]],
    *,
    address: str | None = None,
    num_actors: int | None = None,
    threads: int | None = None,
    on_entry: Callable[[str, dict], None] | None = None,
    on_info: Callable[[dict], None] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """The Ray twin of :func:`tokedit.engines.runner.run_shards`: same contract, same counts.

    ``process_shard`` must be picklable (it is sent to every actor) and load heavy state
    lazily. Each entry is recorded in ``manifest`` by this (driver) process as soon as its
    shard's result arrives; ``on_entry(rel, entry)`` is then called (progress), and
    ``on_info(info)`` once with ``process_shard.info()`` of the first actor that answered.
    A :class:`TokeditError` raised in an actor is raised here with the same message.
    ``threads``: torch threads of a CPU actor (default: this process's, see
    :func:`default_resources`).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if num_actors is not None and num_actors < 1:
        raise InputError(f"--ray-actors {num_actors} must be >= 1", remedy="e.g. --ray-actors 4")
    remove_stale_temp_files(manifest.out_dir)
    todo = [s for s in shards if not manifest.is_complete(s.rel)]
    skipped = len(shards) - len(todo)
    done = 0
    if todo:
        with ray_session(address) as ray:
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False  # tokedit's own bar counts tokens
            ctx.print_on_execution_start = False
            ctx.enable_auto_log_stats = False
            logging.getLogger("ray.data").setLevel(logging.ERROR)
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            size, resources, actor_threads = default_resources(
                ray.cluster_resources(),
                num_actors,
                threads=threads or _local_threads(),
                max_node_cpus=max((n["Resources"].get("CPU", 0) for n in nodes), default=None),
            )
            items = [{"root": str(s.root.resolve()), "rel": s.rel, "fmt": s.fmt} for s in todo]
            ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                _actor_class(process_shard, actor_threads),
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=min(size, len(items))),
                **resources,
            )
            info_pending = on_info is not None
            rows = iter(ds.iter_rows())
            try:
                for row in rows:
                    if row["error"]:
                        _reraise(row["error"])
                    entry = json.loads(row["entry"])
                    manifest.mark_complete(row["rel"], entry)
                    done += 1
                    if info_pending:
                        on_info(json.loads(row["info"]))
                        info_pending = False
                    if on_entry is not None:
                        on_entry(row["rel"], entry)
            finally:
                # An error leaves Ray Data's streaming executor running in a thread; if it is
                # still running at ray.shutdown(), it touches the shut-down core worker and Ray
                # exits the whole process. Closing the iterator stops the executor first.
                close = getattr(rows, "close", None)
                if close is not None:
                    close()
    if skipped:
        log(
            f"resumed: {skipped} shard(s) already complete in {manifest.out_dir}, {done} processed now"
        )
    return {"processed": done, "skipped": skipped}
