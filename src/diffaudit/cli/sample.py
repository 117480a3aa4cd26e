"""``diffaudit sample``: seeded, resumable generation into a sample store."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffaudit.cli.common import emit, file_in_folder, ray_address, run_devices
from diffaudit.core.batch_fit import AUTO, batch_option
from diffaudit.core.errors import DiffauditError
from diffaudit.core.progress import stage_line, warning_line
from diffaudit.core.ray_pool import RAY_HELP

NAME = "sample"
HELP = "generate images into a sharded, resumable store (each image from its own seed)"
#: ``--out`` may name an object store (s3://bucket/store): the store writes through fsspec (cli.common.check_paths).
OUT_OBJECT_STORE = True
DESCRIPTION = (
    "Generate images from a run directory or a local diffusers folder (DDPM/DDIM UNet, class-conditional, or a "
    "StableDiffusionPipeline with --prompts). Image p<P>-i<I> is drawn from a seed derived from (--seed, P, I), so "
    "any image can be regenerated alone and --batch-size does not change pixels. A killed run resumes where it stopped."
)


def read_prompts(path: str) -> list[str]:
    """The non-empty lines of the UTF-8 prompt file ``path`` (``--prompts``; a folder of `diffaudit prompts`:
    its ``prompts.txt``), stripped, in order: prompt ``pK`` is the K-th of them (counted from 0), which a
    file with blank lines does not number as its lines, and this is said. A JSON document (a result.json
    given by mistake, whose every line would be a prompt) is refused."""
    from diffaudit.core.io import read_text

    path = file_in_folder(path, "prompts.txt")
    text = read_text(path, "--prompts")
    if text.lstrip()[:1] in ("{", "["):
        try:
            json.loads(text)
        except ValueError:
            pass
        else:
            raise DiffauditError(f"--prompts {path} is a JSON document, not a prompt file (one prompt per line); "
                                 "`diffaudit prompts --out DIR` writes DIR/prompts.txt")
    lines = [ln.strip() for ln in text.splitlines()]
    prompts = [ln for ln in lines if ln]
    if not prompts:
        raise DiffauditError(f"{path}: the prompt file is empty (one prompt per line)")
    last = max(i for i, ln in enumerate(lines) if ln)  # blank lines after it shift no prompt's number
    blank = next((i for i in range(last) if not lines[i]), None)
    if blank is not None:
        stage_line(f"sample: blank lines of {path} are skipped (the first is line {blank + 1}): prompt pK is its K-th "
                   "non-blank line, counted from p0, not line K + 1")
    seen: set[str] = set()
    again = []  # the lines that repeat an earlier one
    for i, prompt in enumerate(prompts):
        if prompt in seen:
            again.append(i)
        seen.add(prompt)
    if again:
        repeats, first = len(again), again[0]
        warning_line("sample", f"{repeats:,} prompt line{'s' if repeats != 1 else ''} of {path} "
                     f"{'repeat' if repeats != 1 else 'repeats'} an earlier one "
                     f"(the first: p{first}, {prompts[first]!r}): each is sampled as a prompt of its own, and extract "
                     "groups their generations as one prompt's")
    return prompts


def add_sample_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--n", type=int, default=None,
                   help="images to generate (unconditional model; with --prompts or --classes use --per-prompt)")
    g.add_argument("--prompts", help="prompt file, one per line (text for Stable Diffusion, class index for class-conditional)")
    g.add_argument("--classes", action="store_true", help="every class of a class-conditional model is a prompt")
    g.add_argument("--per-prompt", type=int, default=None, help="images per prompt with --prompts or --classes (default: 1; "
                   "paper: 500)")
    g.add_argument("--steps", type=int, default=50, help="DDIM steps")
    g.add_argument("--eta", type=float, default=0.0, help="DDIM η of a pixel UNet (0 deterministic, 1 DDPM-like; a Stable "
                   "Diffusion pipeline samples at 0)")
    g.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance of a Stable Diffusion pipeline (default: 7.5)")
    g.add_argument("--scheduler", choices=("ddim", "dpm", "pndm"), default=None,
                   help="sampler of a Stable Diffusion pipeline (default: ddim); a pixel UNet follows its scheduler config")
    g.add_argument("--micro-batch", type=batch_option, default=None,
                   help="images per UNet call (fixed; recorded, since kernels may round differently at other sizes, in "
                        "float32 too; "
                        "default 32 CPU, 256 CUDA, 8 Stable Diffusion); auto: on CUDA the largest that fits within 80%% "
                        "of the GPU's memory, probed once (a resumed store keeps the one it recorded)")
    g.add_argument("--batch-size", type=int, default=None, help="images per source call (does not change pixels)")
    g.add_argument("--shard-size", type=int, default=1024, help="images per store shard")
    g.add_argument("--fast", action="store_true", help="CUDA fast path: bf16 weights, and channels-last memory for a pixel UNet (for a Stable "
                   "Diffusion pipeline only with --compile) (images within mean l2 0.0084 of fp32 on a trained CIFAR-10 model, docs/performance.md)")
    g.add_argument("--compile", action="store_true", help="with --fast: torch.compile the UNet (worth it for large runs)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="run directory or local diffusers folder")
    p.add_argument("--out", required=True,
                   help="sample store: a folder, or an object-store URL such as s3://bucket/store (needs fsspec and s3fs, "
                        "gcsfs or adlfs; credentials as those packages find them); resumed when it holds finished shards")
    p.add_argument("--seed", type=int, default=0, help="run seed; image seeds derive from it")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--fresh", action="store_true", help="delete the store and start over")
    p.add_argument("--check-shards", action="store_true",
                   help="on resume, read every finished shard and check its pixels against the SHA-256 its sidecar "
                        "records (after copying a store, or to rule out changed bytes); by default only each shard's "
                        "size is checked, and the digest of shards modified after they were written. A damaged "
                        "shard is made again")
    p.add_argument("--ray", type=ray_address, default=None, metavar="ADDRESS",
                   help=f"spread shards over a Ray cluster: {RAY_HELP}; every node reads --model at the same path "
                        "and writes into --out (a shared filesystem, or an object-store URL every node can reach). "
                        "One worker per GPU, or on CPUs one per CPU of the cluster (each with its own copy of the "
                        "model), at most one per shard: `ray start --num-cpus N` limits them")
    add_sample_options(p)


#: The most generations one store plans: 25 times the paper's Stable Diffusion attack (350,000 prompts x 500);
#: 10^11 planned 97 million shards and hung before the first.
MAX_GENERATIONS = 1 << 32
#: The largest fixed ``--micro-batch``: `auto` probes pixel UNets up to 4,096; a batch is padded to it, so
#: 10^11 asked for its padding's memory at once.
MAX_MICRO_BATCH = 65_536


def check_count_flags(args: argparse.Namespace) -> None:
    """Refuse ``--n`` with ``--per-prompt``, ``--prompts`` or ``--classes``, and ``--prompts`` with ``--classes``
    (one of the two would be ignored), a count, or a ``--batch-size``, below 1, and a count or ``--micro-batch``
    past its bound (:data:`MAX_GENERATIONS`, :data:`MAX_MICRO_BATCH`)."""
    for flag, n in (("--n", args.n), ("--per-prompt", args.per_prompt)):
        if n is not None and not 1 <= n <= MAX_GENERATIONS:
            raise DiffauditError(f"{flag} must lie in [1, {MAX_GENERATIONS:,}] (images to generate); got {n:,}")
    micro = getattr(args, "micro_batch", None)
    if isinstance(micro, int) and micro > MAX_MICRO_BATCH:
        raise DiffauditError(f"--micro-batch must be at most {MAX_MICRO_BATCH:,} images per UNet call (or auto); got "
                             f"{micro:,}")
    if getattr(args, "batch_size", None) is not None and args.batch_size < 1:
        raise DiffauditError(f"--batch-size must be at least 1 (images per source call); got {args.batch_size}")
    if args.n is not None and args.per_prompt is not None:
        raise DiffauditError("give --n (images of an unconditional model) or --per-prompt (images per prompt), not both")
    if args.prompts and args.classes:  # --prompts would win, and --classes be ignored
        raise DiffauditError("give --prompts FILE (its lines, class indices for a class-conditional model) or --classes "
                             "(every class), not both")
    if args.n is not None and (args.prompts or args.classes):
        which = "--prompts" if args.prompts else "--classes"
        raise DiffauditError(f"--n counts the images of an unconditional model; with {which} use --per-prompt "
                             "(images per prompt) instead")


def plan_prompts(args: argparse.Namespace, source, prompts: list[str] | None = None) -> tuple[list[str | None], int]:
    """(prompts, per_prompt) for the request (``sample_into`` has refused a stray ``--n`` and a count below 1
    already, :func:`check_count_flags`; the source checks the prompts themselves, with ``check_prompts``), at
    most :data:`MAX_GENERATIONS` generations in all. ``prompts``: ``--prompts``' lines when the caller has
    read them already."""
    planned = _planned_prompts(args, source, prompts)
    prompts, per_prompt = planned
    if len(prompts) * per_prompt > MAX_GENERATIONS:
        raise DiffauditError(f"{len(prompts):,} prompts x --per-prompt {per_prompt:,} is more than {MAX_GENERATIONS:,} "
                             "generations in one store: split the prompts over several stores")
    return planned


def _planned_prompts(args: argparse.Namespace, source, prompts: list[str] | None) -> tuple[list[str | None], int]:
    """(prompts, per_prompt) as the flags ask: ``--prompts``' lines, ``--classes``' class indices, or one
    unconditional "prompt" (None) of ``--n`` images."""
    num_classes = source.num_classes
    per_prompt = 1 if args.per_prompt is None else args.per_prompt
    if args.prompts:
        return prompts if prompts is not None else read_prompts(args.prompts), per_prompt
    if args.classes:
        if not num_classes:
            raise DiffauditError("--classes needs a class-conditional model")
        return [str(c) for c in range(num_classes)], per_prompt
    if num_classes:
        raise DiffauditError("this model is class-conditional: give --prompts FILE or --classes")
    n = args.n if args.n is not None else args.per_prompt
    if n is None:
        raise DiffauditError("say how many images: --n N")
    return [None], n


def setting_flags(args: argparse.Namespace) -> dict[str, str]:
    """The flag of each setting not named after its option (for a refusal to resume): ``per_prompt`` is
    ``--n`` when given (an unconditional model), else ``--per-prompt`` (see :func:`plan_prompts`)."""
    return {"per_prompt": "--n" if args.n is not None else "--per-prompt", "device_type": "--device"}


def upgrade_settings(old: dict) -> dict:
    """Settings of an earlier version read as today's: off CUDA it recorded ``--fast``/``--compile`` as
    given, though they did nothing there (:func:`fast_path_flags`); its ``model_digest`` included the
    folder's ``train_ids.json`` where one lay beside the weights (read as the weights' digest when it is
    the same folder's, that file included)."""
    from diffaudit.models.digest import model_digest

    new = {**old, "fast": False, "compile": False} if old.get("device_type") != "cuda" else dict(old)
    model, digest = old.get("model"), old.get("model_digest")
    if isinstance(model, str) and Path(model).is_dir() and digest == model_digest(model):
        new["model_digest"] = model_digest(model, members=False)
    return new


def fast_path_flags(args: argparse.Namespace, device) -> tuple[bool, bool]:
    """(fast, compile) as they take effect on ``device``, which the settings record: ``--fast`` is a
    CUDA path, and ``--compile`` works only with it; each is said aloud where it does nothing."""
    fast, compile = bool(args.fast), bool(getattr(args, "compile", False))
    if device.type != "cuda" and (fast or compile):
        stage_line(f"sample: --fast and --compile apply on CUDA only; sampling in float32, eagerly, on {device.type}")
        return False, False
    if compile and not fast:
        stage_line("sample: --compile works with --fast only; the UNet runs eagerly")
    return fast, compile and fast


def _micro_batch(args: argparse.Namespace, out: str) -> int | str | None:
    """``--micro-batch`` as the source takes it: ``auto`` in a store that recorded a micro-batch is that one
    (the store resumes where another probe might choose otherwise; ``--fresh`` probes again)."""
    from diffaudit.store import SampleStore

    if args.micro_batch != AUTO or args.fresh:
        return args.micro_batch
    recorded = (SampleStore.recorded_settings(out) or {}).get("micro_batch")
    if isinstance(recorded, int):
        stage_line(f"sample: --micro-batch auto: {recorded}, as {out} records")
        return recorded
    return AUTO


def _device(args: argparse.Namespace, out: str) -> str:
    """``--device`` as the store takes it: with ``--ray``, ``auto`` in a store that recorded the CPU stays
    the CPU where the cluster's GPUs would now take it (a store made on a CPU-only head before ``--ray``
    followed the cluster's GPUs resumes as it was made, said once; ``--fresh`` starts over on the GPUs).
    Elsewhere a store made on another device is refused, naming ``--device``."""
    from diffaudit.core.device import resolve_devices
    from diffaudit.core.ray_pool import cluster_gpus, connect
    from diffaudit.store import SampleStore

    if args.device != "auto" or args.fresh or not getattr(args, "ray", None):
        return args.device
    if (SampleStore.recorded_settings(out) or {}).get("device_type") != "cpu":
        return args.device
    if resolve_devices("auto", cluster_gpus(connect(args.ray)))[1].type == "cpu":
        return args.device
    stage_line(f"sample: --device auto: cpu, as {out} records (made before --ray sampled on the cluster's GPUs); "
               "the GPUs stay idle: --fresh starts it over on them")
    return "cpu"


def _opened_source(args: argparse.Namespace, model: str, options: dict, head, workers):
    """A context giving the source ``open_source(model, **options)``: opened here, or, with ``--ray`` on a
    head without the workers' device (a CPU-only head of a GPU cluster), opened on one worker, whose
    report of it decides the store's settings (the micro-batch and dtype its device resolves) and which
    checks the prompts."""
    import contextlib

    from diffaudit.sampling.sources import open_source

    if head.type == workers.type:
        return contextlib.nullcontext(open_source(model, device=head, **options))
    from diffaudit.store.ray_fill import source_on_worker

    stage_line(f"sample: the model is opened on a Ray worker's {workers.type} to settle the store's settings")
    return source_on_worker(args.ray, model, options, workers.type)


def sample_into(args: argparse.Namespace, model: str, out: str):
    """Open the source and store, then fill it (used by `sample` and `audit`); returns the SampleStore."""
    from diffaudit.core.results import envelope
    from diffaudit.store import SampleStore, fill_store

    check_count_flags(args)  # before the model is loaded
    given = read_prompts(args.prompts) if args.prompts else None  # an unreadable prompt file too
    if getattr(args, "ray", None):  # a store the workers cannot reach is refused before anything is written
        from diffaudit.store.location import check_reachable_by_workers

        check_reachable_by_workers(out, "--out")
    # connects to --ray's cluster first: unreachable is an error at once
    head, workers = run_devices(args, "sample", device=_device(args, out), head_share=None)
    fast, compile = fast_path_flags(args, workers)
    # how every process opens the source: here (or the planning worker), and --ray's shard workers
    options = {"steps": args.steps, "eta": args.eta, "micro_batch": _micro_batch(args, out),
               "guidance_scale": args.guidance_scale, "scheduler": args.scheduler, "fast": fast, "compile": compile}
    with _opened_source(args, model, options, head, workers) as source:
        prompts, per_prompt = plan_prompts(args, source, given)
        # before SampleStore.create: a store made for prompts the model refuses would turn away the corrected re-run
        source.check_prompts(prompts)
        sampler, image_shape = source.settings(), source.image_shape
    from diffaudit.models.digest import model_digest

    # the weights' digest too: a store resumed after the folder's weights changed would mix two models (not
    # its train_ids.json, which a model trained elsewhere is given for `mia` once it has generated)
    settings = {"model": str(Path(model).resolve()), "model_digest": model_digest(model, members=False), "seed": args.seed,
                "device_type": workers.type, "fast": fast, "compile": compile, **sampler}
    store = SampleStore.create(out, settings=settings, prompts=prompts, per_prompt=per_prompt,
                               image_shape=image_shape, shard_size=args.shard_size, fresh=args.fresh,
                               upgrade=upgrade_settings, check_shards=getattr(args, "check_shards", False))
    if not store.pending() and store.location.exists("result.json") and (store.path is not None or not store.stray_shards()):
        # finished earlier: nothing rewritten (a finished store may lie on read-only storage); an object store,
        # which has no lock, is first checked for shards another command wrote after it was finished
        return store
    kept = store.n_shards - len(store.pending())
    if kept:  # as `train` says it resumes: the re-run's count line is of the images it makes now
        stage_line(f"sample: resuming {store.name}: {kept} of {store.n_shards} shards finished earlier, kept")
    for attempt in range(2):  # stray_shards checks first that the store was not replaced meanwhile
        if getattr(args, "ray", None):
            from diffaudit.store.ray_fill import fill_store_ray

            fill_store_ray(store, settings["model"], args, options)  # absolute: the workers' nodes read it too
        else:
            fill_store(store, source, batch_size=args.batch_size)
        stray = store.stray_shards()
        if not stray:
            break
        if attempt:
            raise DiffauditError(f"{store.name}: shard {stray[0]} keeps being written by another run ({len(stray)} shard(s) "
                                 "in all); stop the other command writing into this store, then re-run")
        # e.g. an object store's earlier command still writing when --fresh replaced it (no lock there)
        stage_line(f"sample: {len(stray)} finished shard(s) of {store.name} (e.g. shard {stray[0]}) were written by another "
                   "run with other settings; they are made again")
        store.discard(stray)
    store.check_still_this_store()
    store.location.write_json("result.json", envelope(
        "sample", settings, {"seed": args.seed}, n_samples=int(store.manifest["n_total"]), n_prompts=len(prompts),
        per_prompt=per_prompt, n_shards=store.n_shards))
    return store


def run(args: argparse.Namespace) -> int:
    store = sample_into(args, args.model, args.out)
    # --json: the store's result.json (settings, seeds, versions, counts), as other commands print theirs
    emit(args, {"store": store.name, **store.location.read_json("result.json")},
         f"{store.manifest['n_total']} generations in {store.name}")
    return 0
