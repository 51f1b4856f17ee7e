"""``--engine ray``: run the per-shard step of a command in a pool of Ray actors.

The shards still to do are handed, one at a time, to a fixed pool of Ray actors (plain Ray
core actors: ``ray.remote`` classes, ``ray.wait`` on their results). Each actor loads the
model once and calls the SAME per-shard callable as ``--engine local`` (for ``score``:
:class:`tokedit.scoring.run.ShardScorer`). That callable reads the shard, writes its output
with tokedit's own writers and paths (temp file, fsync, rename; on an object store, upload
to a temporary key and copy: the actor reads and writes the store itself, the driver never
moves shard bytes) and returns the shard's manifest entry. The driver records each entry in
the manifest as it arrives, so the output layout, the manifest, resume after a crash and
the refusal of other options are those of the local engine, and the output bytes are
identical.

The driver starts no thread of its own: it submits calls and waits on their results in the
calling thread, and on every way out (the last result, a shard's error, Ctrl-C, an error in
the caller's callback) it kills the pool. So when :func:`run_shards_ray` returns, nothing it
started is still running in the caller's process, and the caller may ``ray.shutdown()`` at
once. (Ray Data's streaming iterator is not used for this reason: after an early exit it
leaves a block-prefetcher thread running in the driver, and that thread ends the whole
process if it touches Ray after ``ray.shutdown()``; ``tests/test_ray_engine.py`` checks the
driver's threads after a failed run.)

Resources (:func:`default_resources`): where the cluster has GPUs, one actor per GPU (1 GPU
and 1 CPU each). On CPUs, one CPU of the cluster is left to the driver (it reads results and
writes the manifest), and each actor gets as many CPUs, and torch threads, as the local
engine would use, because torch's CPU results can differ in the last bit between thread
counts. The local instance started without ``--ray-address`` advertises one CPU more than
the machine has cores: that is the CPU kept free, and one actor gets all the cores.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

from tokedit.errors import InputError, OutputError, TokeditError, arg
from tokedit.io.manifest import Manifest
from tokedit.io.shards import Shard
from tokedit.io.storage import as_path, portable
from tokedit.io.write import remove_stale_temp_files

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'tokedit[ray]'   (installs ray[data])"


def import_ray():
    """Import Ray, or explain how to install it."""
    try:
        import ray
    except ImportError as e:
        raise InputError(
            f"{arg('engine', 'ray')} needs Ray, which cannot be imported here ({e})",
            remedy=f"{INSTALL_HINT}, or use {arg('engine', 'local')}",
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
    # Ray's C++ core logs lines to stderr that are noise for tokedit's users (actor deaths
    # after ray.kill, for example).
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
            # One logical CPU more than the cores: kept free for the driver (see
            # default_resources), while the actors use every core.
            num_cpus = num_cpus or (os.cpu_count() or 1) + 1
            ray.init(address="local", num_cpus=num_cpus, **kwargs)
    except (ConnectionError, TimeoutError, ValueError, RuntimeError) as e:
        raise InputError(
            f"cannot start or reach Ray{f' at {address}' if address else ''}: {e}",
            remedy=f"check {arg('ray_address')} (host:port of a running head node, or "
            "'auto'), or leave it out to start a local instance",
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
            f"or leave {arg('ray_address')} out to start a local instance",
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
    one CPU of the cluster always stays free for the driver; an actor asks for as
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


# An actor that dies (its process killed, out of memory) is restarted and its call retried this
# often before the run fails with the shard named; the manifest keeps what was done.
ACTOR_RETRIES = 3
# How long the pool may take to go after the run ends (ray.kill is asynchronous).
STOP_TIMEOUT_S = 1.0


class _ShardActorBase:
    """A Ray actor: runs ``fn`` (the per-shard callable) on one shard per call.

    Every call takes one shard's (root, rel, fmt) and returns (rel, entry, error, info),
    with a :class:`TokeditError` sent back as data (the driver re-raises it as is).
    """

    fn: Callable[[Shard], dict]
    threads: int | None = None  # torch intra-op threads (CPU pools)

    def __init__(self) -> None:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)

    def run(self, root, rel: str, fmt: str) -> tuple[str, dict, str, dict]:
        shard = Shard(as_path(root), rel, fmt)
        try:
            entry = self.fn(shard)
            info_of = getattr(self.fn, "info", None)
            return rel, entry, "", (info_of() if callable(info_of) else {})
        except TokeditError as e:
            error = {"type": type(e).__name__, "message": e.message, "remedy": e.remedy}
            return rel, {}, json.dumps(error), {}


def _actor_class(fn: Callable[[Shard], dict], threads: int | None) -> type:
    # The callable travels inside the (pickled) class rather than as a constructor argument:
    # Ray keeps the constructor arguments of a restartable actor in the object store and
    # warns about it (https://github.com/ray-project/ray/issues/53727).
    attrs = {"fn": fn, "threads": threads}
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
) -> dict[str, int]:
    """The Ray twin of :func:`tokedit.engines.runner.run_shards`: same contract, same counts.

    ``process_shard`` must be picklable (it is sent to every actor) and load heavy state
    lazily. Each entry is recorded in ``manifest`` by this (driver) process as soon as its
    shard's result arrives; ``on_entry(rel, entry)`` is then called (progress), and
    ``on_info(info)`` once with ``process_shard.info()`` of the first actor that answered.
    A :class:`TokeditError` raised in an actor is raised here with the same message, once
    the shards already running have finished: they and those finished before stay recorded. ``threads``: torch threads of a CPU actor
    (default: this process's, see :func:`default_resources`). Nothing started here outlives
    the call (see the module docstring).
    """
    if num_actors is not None and num_actors < 1:
        raise InputError(
            f"{arg('ray_actors', num_actors)} must be >= 1", remedy=f"e.g. {arg('ray_actors', 4)}"
        )
    remove_stale_temp_files(manifest.out_dir)
    todo = [s for s in shards if not manifest.is_complete(s.rel)]
    skipped = len(shards) - len(todo)
    done = 0
    if todo:
        with ray_session(address) as ray:
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            size, resources, actor_threads = default_resources(
                ray.cluster_resources(),
                num_actors,
                threads=threads or _local_threads(),
                max_node_cpus=max((n["Resources"].get("CPU", 0) for n in nodes), default=None),
            )
            done = _run_pool(
                ray,
                todo,
                process_shard,
                manifest,
                size=min(size, len(todo)),
                resources=resources,
                threads=actor_threads,
                on_entry=on_entry,
                on_info=on_info,
            )
    if skipped:
        logger.info(
            "resumed: %d shard(s) already complete in %s, %d processed now",
            skipped,
            manifest.out_dir,
            done,
        )
    return {"processed": done, "skipped": skipped}


def _run_pool(
    ray: Any,
    shards: list[Shard],
    fn: Callable[[Shard], dict],
    manifest: Manifest,
    *,
    size: int,
    resources: dict,
    threads: int | None,
    on_entry: Callable[[str, dict], None] | None,
    on_info: Callable[[dict], None] | None,
) -> int:
    """Run ``fn`` on every shard with ``size`` actors busy; record each entry as it arrives.

    A shard's :class:`TokeditError` stops new submissions; the calls already running finish
    and are recorded (their work is kept), then the first error is raised. Any other way
    out (Ctrl-C, an error in a callback or in Ray) kills the calls still running. On every
    way out the pool is killed and its deaths waited for before this returns, and temp
    files of killed calls are removed. Returns the number of shards recorded."""
    actor_cls = ray.remote(max_restarts=ACTOR_RETRIES, max_task_retries=ACTOR_RETRIES, **resources)(
        _actor_class(fn, threads)
    )
    queue = list(reversed(shards))
    running: dict[Any, tuple[Any, Shard]] = {}
    actors: list = []
    error = ""
    done = 0

    def submit(actor: Any) -> None:
        shard = queue.pop()
        root = portable(shard.root.resolve())  # a URL: a UPath with its storage options
        running[actor.run.remote(root, shard.rel, shard.fmt)] = (actor, shard)

    try:
        actors = [actor_cls.remote() for _ in range(size)]
        for actor in actors[: len(queue)]:
            submit(actor)
        while running:
            [ref], _ = ray.wait(list(running), num_returns=1)
            actor, shard = running.pop(ref)
            rel, entry, shard_error, info = _shard_result(ray, ref, shard)
            if shard_error:
                error = error or shard_error
            else:
                manifest.mark_complete(rel, entry)
                done += 1
                if on_info is not None and done == 1:
                    on_info(info)
                if on_entry is not None:
                    on_entry(rel, entry)
            if queue and not error:
                submit(actor)
    finally:
        _stop_pool(ray, actors)
        if running:  # killed mid-shard: their temp files are stale now
            remove_stale_temp_files(manifest.out_dir)
    if error:
        _reraise(error)
    return done


def _shard_result(ray: Any, ref: Any, shard: Shard) -> tuple[str, dict, str, dict]:
    """What an actor's call on ``shard`` returned (see ``_ShardActorBase.run``); an actor
    that died is an :class:`OutputError` naming the shard."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as e:
        raise OutputError(
            f"{shard.path}: the Ray actor processing this shard failed "
            f"({type(e).__name__}: {_first_line(e)})",
            remedy="rerun the same command to resume (finished shards are kept); "
            f"if it fails again on this shard, run it with {arg('engine', 'local')} to "
            "see the error, or give the actors more memory",
        ) from e


def _stop_pool(ray: Any, actors: list) -> None:
    """Kill the actors (and the calls they run) and wait until Ray reports them dead."""
    for actor in actors:
        ray.kill(actor, no_restart=True)
    # A call on a killed actor fails once Ray knows the actor is dead.
    pings = [actor.__ray_ready__.options(max_task_retries=0).remote() for actor in actors]
    dead, alive = ray.wait(pings, num_returns=len(pings), timeout=STOP_TIMEOUT_S)
    if alive:
        logger.warning(
            "%d Ray actor(s) of this run did not stop within %g s of being killed; "
            "Ray ends them when the cluster notices",
            len(alive),
            STOP_TIMEOUT_S,
        )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""
