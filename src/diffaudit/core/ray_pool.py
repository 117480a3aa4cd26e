"""Resumable parts of a job computed by worker actors on a Ray cluster (issue 8).

A job is a set of parts, each finished when its own file is written (atomically, last), so the
files on disk say what is left: :func:`run_parts` starts one worker actor per GPU (or per CPU),
hands the pending parts one at a time to whichever actor is free. A worker lost mid-part leaves
that part's file unwritten, and the part goes back to the other workers (fresh ones are started when
none is left). A part's file is written once, atomically: a worker killed after writing it may see
its part handed out again, but never leaves a second copy or a partial file. The outputs must not depend on which worker computes a part
(seeded or exact work), so the union of the parts is what one process would have written.

The workers run on the cluster's nodes and read their inputs there (a shared filesystem, or the same
paths on every node); a worker that finds other inputs than the job recorded raises
:class:`~diffaudit.core.errors.DiffauditError`, and that refusal, not a count of failed parts, is what
the command reports. Ray is optional (``pip install 'diffaudit[ray]'``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence

from diffaudit.core.errors import DiffauditError
from diffaudit.core.progress import progress_bar, quiet, stage_line

#: How a command names the cluster: a Ray address, ``auto`` (the cluster this node belongs to) or
#: ``local`` (a Ray instance started on this machine).
RAY_HELP = ("a Ray address, `auto` (the cluster this node is part of) or `local` (start Ray on this machine); "
            "--device then names the workers' device (auto: cuda when the cluster has a GPU, even where this "
            "machine has none)")


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
    if address == "auto":
        found = _auto_address()
        _check_reachable(found, **_auto_words(found, os.environ.get("RAY_ADDRESS")))
    elif address != "local":
        _check_reachable(address)
    level = logging.ERROR if quiet() else logging.WARNING  # --quiet: Ray's own notices too
    try:
        if address == "local":
            ray.init(address="local", ignore_reinit_error=True, log_to_driver=False, logging_level=level)
        else:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, logging_level=level)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if address == "local":
            raise DiffauditError(f"--ray local: cannot start Ray on this machine ({first})") from None
        # something answered at the address (checked above): a cluster that refused this driver, not a missing one
        raise DiffauditError(f"--ray {address}: a Ray cluster answers there but this process could not join it ({first}); "
                             "Ray's messages above may say why (another Ray version, or its authentication: a token "
                             "this process lacks); on a node of that cluster `--ray auto` joins it as that node "
                             "does, and `--ray local` starts a Ray of this process's own") from None
    return ray


def _auto_address() -> str:
    """The address ``auto`` names: ``$RAY_ADDRESS``, else the cluster this machine last started (as Ray
    records it); a record left by a head that died would have Ray retry it without end."""
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # pragma: no cover - a Ray without it: let ray.init say what it finds
        return os.environ.get("RAY_ADDRESS", "")
    try:
        found = canonicalize_bootstrap_address("auto")
    except ConnectionError:
        found = None
    if not found:
        raise DiffauditError("--ray auto: no Ray cluster is running on this machine (and RAY_ADDRESS is not set); "
                             "start one with `ray start --head`, give its address, or use `--ray local`")
    return found


def _auto_words(found: str, env: str | None) -> dict[str, str | None]:
    """How a refusal of ``--ray auto`` names the address it found (``shown``) and what to do (``remedy``):
    one from ``$RAY_ADDRESS`` (``env``; Ray may rewrite it to the node's own IP) is that variable's to correct."""
    if not env:
        return {"shown": f"auto (the cluster at {found})", "remedy": None}
    return {"shown": f"auto (the cluster at {found}, from RAY_ADDRESS={env})",
            "remedy": "correct or unset RAY_ADDRESS, which --ray auto reads first"}


def _check_reachable(address: str, timeout: float = 5.0, *, shown: str | None = None, remedy: str | None = None) -> None:
    """Refuse an address ``host:port`` (optionally ``ray://``) where nothing accepts a connection within
    ``timeout`` seconds: Ray itself retries such an address without end. ``shown``: the address as the
    refusal names it; ``remedy``: what to do instead of starting a cluster (an address from ``RAY_ADDRESS``)."""
    import socket

    if not address:
        return
    shown = shown or address
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise DiffauditError(f"--ray {shown}: expected a Ray address HOST:PORT, `auto` or `local`")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise DiffauditError(f"--ray {shown}: nothing answers there ({exc.strerror or exc}); " + (
            remedy or "start a cluster with `ray start --head`, give its address, or use `--ray local`")) from None


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


def cluster_gpus(ray) -> int:
    """The GPUs of the cluster ``ray`` is connected to (Ray's ``GPU`` resource, every node's together)."""
    return int(ray.cluster_resources().get("GPU", 0))


def say_if_waiting(ray, actors: Sequence[Any], gpu: bool, what: str, timeout: float = 10.0) -> None:
    """Say when none of ``actors`` has started within ``timeout`` seconds: Ray waits without a word until
    the cluster frees what they ask for (a GPU, or CPUs that other jobs hold). Returns as soon as one
    has started."""
    if not actors:
        return
    ready, _ = ray.wait([a.__ray_ready__.remote() for a in actors], num_returns=1, timeout=timeout)
    if not ready:
        key = "GPU" if gpu else "CPU"
        total = int(ray.cluster_resources().get(key, 0))
        stage_line(f"{what}: no Ray worker has started after {timeout:.0f} s; the cluster ({total} {key}s in all) "
                   f"may have none free while other jobs hold them: waiting")


def worker_error(exc: Exception, what: str) -> DiffauditError:
    """The error to raise for a Ray task whose code raised ``exc`` (a ``RayTaskError``): the worker's own
    refusal (a :class:`DiffauditError`) as it is, anything else as ``what`` and the cause."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, DiffauditError):
        return cause
    return DiffauditError(f"{what}: {type(cause or exc).__name__}: {cause or exc}")


@dataclass(frozen=True)
class Slot:
    """Where one worker actor runs: ``cpus`` CPUs (and a GPU when ``gpu``), on ``node`` when given
    (a preference: an actor restarted after its node is lost may run elsewhere)."""

    cpus: int
    gpu: bool = False
    node: str | None = None


def cluster_slots(ray, use_gpu: bool, what: str, *, per_node: bool = False, threads: int | None = 1) -> list[Slot]:
    """The workers for the cluster: one per GPU when ``use_gpu``; else one per CPU with one CPU each, or
    with ``per_node`` one per node holding all that node's CPUs (a worker that holds a large reference,
    such as the training set of a nearest-neighbour search, once per node rather than once per core).
    ``threads`` (not None) fixes the CPUs of a GPU or per-CPU worker. ``what`` names the work in the
    error for a cluster without GPUs."""
    resources = ray.cluster_resources()
    if use_gpu:
        gpus = cluster_gpus(ray)
        if gpus == 0:
            raise DiffauditError(f"{what} runs on cuda, but the Ray cluster has no GPU; run on a cluster with GPUs, "
                                 "or on the CPU (--device cpu)")
        return [Slot(threads or 1, gpu=True)] * gpus
    if per_node:
        nodes = [(n["NodeID"], int(n.get("Resources", {}).get("CPU", 0))) for n in ray.nodes() if n.get("Alive")]
        slots = [Slot(cpus, node=node) for node, cpus in nodes if cpus > 0]
        if slots:
            return slots
    return [Slot(threads or 1)] * max(1, int(resources.get("CPU", 1)))


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
    ``completed`` before this run). Workers: :func:`cluster_slots` (``per_node``, ``threads``), at most
    ``workers`` and never more than the parts.

    Parts are handed out one at a time to whichever worker is free, so a slow or lost node holds up
    only the part it was computing. A worker that dies (killed, out of memory, its node lost) gives its
    part back to the others; when none is left, fresh workers are started. A part that has killed its
    worker ``max_rounds`` times is an error. An error the worker's code raises is final, since
    computing the part again would raise it again: the worker's own refusal (a :class:`DiffauditError`)
    is raised as it is, anything else as an error naming the part and the cause.
    """
    from collections import Counter, deque

    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray = connect(address)
    queue = deque(pending())
    if not queue:
        return 0
    slots = cluster_slots(ray, use_gpu, label, per_node=per_node, threads=threads)[:min(workers or len(queue), len(queue))]
    Actor = ray.remote(max_restarts=0, max_task_retries=0)(_Host)

    def start(slot: Slot):
        placement = {} if slot.node is None else {
            "scheduling_strategy": NodeAffinitySchedulingStrategy(slot.node, soft=True)}
        return Actor.options(num_cpus=slot.cpus, num_gpus=1 if slot.gpu else 0, **placement).remote(
            factory, (*args, slot.cpus))

    actors = {i: start(slot) for i, slot in enumerate(slots)}
    busy: dict[Any, tuple[int, Hashable]] = {}  # task -> (worker, part)
    deaths: Counter = Counter()
    try:
        say_if_waiting(ray, list(actors.values()), use_gpu, label)
        with progress_bar(label, total, unit=unit, completed=completed) as bar:
            while queue or busy:
                if queue and not actors:  # every worker died: start them afresh
                    actors = {i: start(slot) for i, slot in enumerate(slots)}
                working = {w for w, _ in busy.values()}
                for w in [w for w in actors if w not in working]:
                    if queue:
                        part = queue.popleft()
                        busy[actors[w].fill.remote(part)] = (w, part)
                done, _ = ray.wait(list(busy), num_returns=1)
                w, part = busy.pop(done[0])
                try:
                    bar.advance(size(ray.get(done[0])))
                except ray.exceptions.RayTaskError as exc:  # the worker's code raised: final
                    raise worker_error(exc, f"{label}: a Ray worker failed on part {part}") from None
                except ray.exceptions.RayError:  # the worker died: its part goes back to the others
                    ray.kill(actors.pop(w))
                    deaths[part] += 1
                    if deaths[part] >= max_rounds:
                        raise DiffauditError(f"{label}: part {part} killed its Ray worker {deaths[part]} times "
                                             "(out of memory?); re-run to retry (finished parts are kept)") from None
                    queue.append(part)
    finally:
        for ref in busy:  # the queued parts of a run that ends early
            ray.cancel(ref)
        for a in actors.values():
            ray.kill(a)
    left = pending()
    if left:
        # every part was handed out until a worker reported it finished: its file was written where this
        # node does not see it (each node writes the path on its own disk), or was removed since
        raise DiffauditError(f"{label}: the Ray workers reported {len(left)} part(s) finished whose files this node "
                             f"does not see (first: {left[0]}): workers write the output folder's path on their own "
                             "node, so it must lie on a filesystem every node shares (or an object store for "
                             "`sample --out`); if it does, another command removed them meanwhile (--fresh). Re-run "
                             "(the parts this node sees are kept)")
    return len(slots)
