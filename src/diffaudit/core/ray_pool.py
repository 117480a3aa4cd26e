"""Resumable parts of a job computed by worker actors on a Ray cluster (issue 8).

A job is a set of parts, each finished when its own file is written (atomically, last), so the
files on disk say what is left: :func:`run_parts` starts one worker actor per GPU (or per CPU),
hands the pending parts round-robin to the actors, and after each round asks ``pending()`` again.
A worker lost mid-part leaves that part's file unwritten: Ray restarts the actor and retries the
task, and the next round redoes whatever is still pending; a finished part is never computed twice
by design of the caller's ``pending()``. The outputs must not depend on which worker computes a part
(seeded or exact work), so the union of the parts is what one process would have written.

The workers run on the cluster's nodes and read their inputs there (a shared filesystem, or the same
paths on every node); a worker that finds other inputs than the job recorded raises
:class:`~diffaudit.core.errors.DiffauditError`, and that refusal, not a count of failed parts, is what
the command reports. Ray is optional (``pip install 'diffaudit[ray]'``).
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Sequence

from diffaudit.core.errors import DiffauditError
from diffaudit.core.progress import progress_bar

#: How a command names the cluster: a Ray address, ``auto`` (the cluster this node belongs to) or
#: ``local`` (a Ray instance started on this machine).
RAY_HELP = "a Ray address, `auto` (the cluster this node is part of) or `local` (start Ray on this machine)"


def connect(address: str):
    """The ``ray`` module, connected to ``address`` (see :data:`RAY_HELP`); an initialised Ray is kept."""
    try:
        import ray
    except ImportError:
        raise DiffauditError("--ray needs Ray: pip install 'ray>=2.9' (or diffaudit[ray])") from None
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, ignore_reinit_error=True, log_to_driver=False)
    return ray


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


def cluster_workers(ray, use_gpu: bool, what: str) -> int:
    """Workers for the cluster: one per GPU when ``use_gpu``, else one per CPU. ``what`` names the
    work in the error for a cluster without GPUs."""
    resources = ray.cluster_resources()
    if use_gpu:
        gpus = int(resources.get("GPU", 0))
        if gpus == 0:
            raise DiffauditError(f"{what} runs on cuda, but the Ray cluster has no GPU; run on a cluster with GPUs, "
                                 "or on the CPU (--device cpu)")
        return gpus
    return max(1, int(resources.get("CPU", 1)))


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
    threads: int = 1,
    max_rounds: int = 5,
) -> int:
    """Compute every part ``pending()`` lists on the Ray cluster at ``address``; returns the workers used.

    ``factory(*args)`` builds a worker on its node (picklable: a module-level class or function);
    its ``fill(part)`` computes one part and writes its file. ``size(part)`` is the part's weight in
    the progress bar (``total`` of them, in ``unit``, ``completed`` before this run). Each actor asks for ``threads`` CPUs, and one
    GPU when ``use_gpu``. Raises the workers' own refusal (a :class:`DiffauditError`) as soon as one
    comes back, and an error naming what is left when parts are still pending after ``max_rounds``.
    """
    ray = connect(address)
    n = workers or cluster_workers(ray, use_gpu, label)
    Actor = ray.remote(num_gpus=1 if use_gpu else 0, num_cpus=threads, max_restarts=4, max_task_retries=4)(_Host)
    actors = [Actor.remote(factory, args) for _ in range(n)]
    try:
        with progress_bar(label, total, unit=unit, completed=completed) as bar:
            for _ in range(max_rounds):
                todo = pending()
                if not todo:
                    break
                # round-robin over the actors; each works through its queue in order
                waiting = [actors[i % n].fill.remote(part) for i, part in enumerate(todo)]
                while waiting:
                    done, waiting = ray.wait(waiting, num_returns=1)
                    try:
                        bar.advance(size(ray.get(done[0])))
                    except DiffauditError as exc:  # the worker refused its inputs: retrying cannot help
                        raise getattr(exc, "cause", None) or exc from None
                    except ray.exceptions.RayError:
                        pass  # the part stays pending; the next round redoes it
    finally:
        for a in actors:
            ray.kill(a)
    left = pending()
    if left:
        raise DiffauditError(f"{label}: {len(left)} part(s) could not be computed on the Ray cluster "
                             f"(first: {left[0]}); re-run to retry (finished parts are kept)")
    return n
