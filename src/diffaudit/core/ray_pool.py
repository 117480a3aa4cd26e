"""Resumable parts of a job computed by worker actors on a Ray cluster (issue 8).

A job is a set of parts, each finished when its own file is written (atomically, last), so the
files on disk say what is left: :func:`run_parts` starts one worker actor per GPU (or per CPU),
hands the pending parts round-robin to the actors, and after each round asks ``pending()`` again.
A worker lost mid-part leaves that part's file unwritten: Ray restarts the actor and retries the
task, and the next round redoes whatever is still pending. A part's file is written once, atomically:
a worker killed after writing it may compute it again on the retry, but never leaves a second copy
or a partial file. The outputs must not depend on which worker computes a part
(seeded or exact work), so the union of the parts is what one process would have written.

The workers run on the cluster's nodes and read their inputs there (a shared filesystem, or the same
paths on every node); a worker that finds other inputs than the job recorded raises
:class:`~diffaudit.core.errors.DiffauditError`, and that refusal, not a count of failed parts, is what
the command reports. Ray is optional (``pip install 'diffaudit[ray]'``).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Hashable, Sequence

from diffaudit.core.errors import DiffauditError
from diffaudit.core.progress import progress_bar

#: How a command names the cluster: a Ray address, ``auto`` (the cluster this node belongs to) or
#: ``local`` (a Ray instance started on this machine).
RAY_HELP = "a Ray address, `auto` (the cluster this node is part of) or `local` (start Ray on this machine)"


def connect(address: str):
    """The ``ray`` module, connected to ``address`` (see :data:`RAY_HELP`); an initialised Ray is kept.
    Commands call it before they read their inputs or make ``--out``, so a cluster that cannot be
    reached is an error at once. ``local`` starts a Ray instance of this process's own, never joining
    a cluster already running on this machine."""
    try:
        import ray
    except ImportError:
        raise DiffauditError("--ray needs Ray: pip install 'ray>=2.9' (or diffaudit[ray])") from None
    if ray.is_initialized():
        return ray
    if address not in ("local", "auto"):
        _check_reachable(address)
    try:
        if address == "local":
            ray.init(address="local", ignore_reinit_error=True, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DiffauditError(f"--ray {address}: cannot connect to a Ray cluster ({first}); start one with `ray start "
                             "--head`, give its address, or use `--ray local`") from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse an address ``host:port`` (optionally ``ray://``) where nothing accepts a connection within
    ``timeout`` seconds: Ray itself retries such an address without end."""
    import socket

    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise DiffauditError(f"--ray {address}: expected a Ray address HOST:PORT, `auto` or `local`")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise DiffauditError(f"--ray {address}: nothing answers there ({exc.strerror or exc}); start a cluster with "
                             "`ray start --head`, give its address, or use `--ray local`") from None


class _Host:
    """An actor's body: builds the worker (``factory(*args)``) at its first part, so that a worker's
    refusal of its inputs reaches the driver as the task's error (an error in an actor's constructor
    would only kill the actor), then computes parts with it."""

    def __init__(self, factory: Callable[..., Any], args: Sequence[Any]):
        self.factory, self.args, self.worker = factory, tuple(args), None

    def fill(self, part: Any) -> Any:
        if self.worker is None:
            self.worker = self.factory(*self.args)
        return self.worker.fill(part)


def cluster_workers(ray, use_gpu: bool, what: str, *, per_node: bool = False) -> tuple[int, int]:
    """(workers, CPUs each) for the cluster: one worker per GPU when ``use_gpu``; else one per CPU with
    one CPU each, or with ``per_node`` one per node with the smallest node's CPUs (a worker that holds
    a large reference, such as the training set of a nearest-neighbour search, once per node rather
    than once per core). ``what`` names the work in the error for a cluster without GPUs."""
    resources = ray.cluster_resources()
    if use_gpu:
        gpus = int(resources.get("GPU", 0))
        if gpus == 0:
            raise DiffauditError(f"{what} runs on cuda, but the Ray cluster has no GPU; run on a cluster with GPUs, "
                                 "or on the CPU (--device cpu)")
        return gpus, 1
    if per_node:
        cpus = [int(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
        cpus = [c for c in cpus if c > 0]
        if cpus:
            return len(cpus), min(cpus)
    return max(1, int(resources.get("CPU", 1))), 1


def run_parts(
    address: str,
    factory: Callable[..., Any],
    args: Sequence[Any],
    pending: Callable[[], list[Hashable]],
    *,
    label: str,
    size: Callable[[Hashable], int],
    total: int | None,
    completed: int = 0,
    unit: str,
    use_gpu: bool,
    workers: int | None = None,
    threads: int | None = 1,
    per_node: bool = False,
    max_rounds: int = 5,
) -> int:
    """Compute every part ``pending()`` lists on the Ray cluster at ``address``; returns the workers used.

    ``factory(*args, threads)`` builds a worker on its node (picklable: a module-level class or
    function), ``threads`` the CPUs its actor holds; its ``fill(part)`` computes one part and writes
    its file. ``size(part)`` is the part's weight in the progress bar (``total`` of them, in ``unit``,
    ``completed`` before this run). Workers: ``workers``, else :func:`cluster_workers` (``per_node``),
    never more than the parts; each asks for ``threads`` CPUs (None: what :func:`cluster_workers`
    gives), and one GPU when ``use_gpu``.

    A worker process that dies (killed, out of memory, its node lost) leaves its part pending for the
    next round. An error the worker's code raises is final, since computing the part again would raise
    it again: the worker's own refusal (a :class:`DiffauditError`) is raised as it is, anything else as
    an error naming the part and the cause. Parts still pending after ``max_rounds`` are an error
    naming what is left.
    """
    ray = connect(address)
    todo = pending()
    if not todo:
        return 0
    n, cpus = cluster_workers(ray, use_gpu, label, per_node=per_node)
    n = min(workers or n, len(todo))
    cpus = cpus if threads is None else threads
    Actor = ray.remote(num_gpus=1 if use_gpu else 0, num_cpus=cpus, max_restarts=4, max_task_retries=4)(_Host)
    actors = [Actor.remote(factory, (*args, cpus)) for _ in range(n)]
    waiting: dict[Any, Hashable] = {}
    try:
        with progress_bar(label, total, unit=unit, completed=completed) as bar:
            for _ in range(max_rounds):
                todo = todo or pending()
                if not todo:
                    break
                # round-robin over the actors; each works through its queue in order
                waiting = {actors[i % n].fill.remote(part): part for i, part in enumerate(todo)}
                todo = []
                while waiting:
                    done, _ = ray.wait(list(waiting), num_returns=1)
                    part = waiting.pop(done[0])
                    try:
                        bar.advance(size(ray.get(done[0])))
                    except ray.exceptions.RayTaskError as exc:  # the worker's code raised: final
                        cause = getattr(exc, "cause", None)
                        if isinstance(cause, DiffauditError):
                            raise cause from None
                        raise DiffauditError(f"{label}: a Ray worker failed on part {part}: "
                                             f"{type(cause or exc).__name__}: {cause or exc}") from None
                    except ray.exceptions.RayError:
                        pass  # the worker died: the part stays pending; the next round redoes it
    finally:
        for ref in waiting:  # the queued parts of a run that ends early: not started, not retried
            ray.cancel(ref)
        for a in actors:
            ray.kill(a)
    left = pending()
    if left:
        raise DiffauditError(f"{label}: {len(left)} part(s) could not be computed on the Ray cluster "
                             f"(first: {left[0]}): their workers kept dying; re-run to retry (finished parts are kept)")
    return n
