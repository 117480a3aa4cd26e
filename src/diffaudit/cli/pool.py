"""``diffaudit pool``: read several sample stores as one set of generations (paper §5.1's 16 models).

The folder it writes holds ``pool.json`` (:mod:`diffaudit.store.pool`), the list of the stores, and
copies no image. Given as ``--samples`` to ``verify`` (or ``extract``, ``report``), it reads as every
member's generations, member 0 first, with ids ``m<k>:p<P>-i<I>``: ``verify`` then counts each training
image once over all the models, at the first generation that extracted it, as the paper counts 1,280
unique images over 2^16 generations from each of 16 CIFAR-10 models, and lists what each member
extracted alone.
"""

from __future__ import annotations

import argparse
from typing import Any

from diffaudit.cli.common import canonical_path, emit, emit_finished
from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import write_json_atomic
from diffaudit.core.outdir import prepare_out_dir
from diffaudit.core.progress import printable, warning_line
from diffaudit.core.results import write_result
from diffaudit.report.fmt import counted
from diffaudit.store.pool import MIN_MEMBERS, POOL_FILE, SamplePool, check_alike
from diffaudit.store.sample_store import SampleStore

NAME = "pool"
HELP = "read several sample stores (one per model) as one set of generations, for a unique count over all of them"
DESCRIPTION = (
    "Writes --out/pool.json, the list of the --samples stores (nothing is copied). `diffaudit verify --samples OUT` "
    "then reads every store's generations, the first store's first, with ids m<k>:p<P>-i<I> (k the store's place "
    "in the list), and counts each training image once over all of them, at its first generation, as Carlini et al. "
    "2023 (Sec. 5.1) count the images extracted from 16 CIFAR-10 models (2^16 generations each); its result also "
    "lists what each store extracted alone. Every store must be finished, of one image size, and all conditional "
    "or all unconditional; stores sampled with the same --seed start their generations from the same noise and "
    "are warned of. Stores are recorded by absolute path: moved stores are pooled again where they are, and a "
    "store sampled again after pooling is refused when the pool is read."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", required=True, nargs="+", metavar="STORE",
                   help=f"the sample stores to pool (at least {MIN_MEMBERS}), in order: folders or object-store URLs "
                        "written by `diffaudit sample`")
    p.add_argument("--out", required=True, help="folder for pool.json (resumed automatically when it holds the same "
                                                 "pool)")
    p.add_argument("--fresh", action="store_true", help="delete what --out holds and start over")


def setting_flags(args: argparse.Namespace) -> dict[str, str]:
    """The flag of each setting not named after its option (for a refusal to resume)."""
    return {"members": "--samples (the stores, in order)", "members_identity": "the generations each --samples store holds"}


def _open_members(specs: list[str]) -> list[SampleStore]:
    """The stores ``specs`` names, each a finished sample store (a pool is refused: give its members)."""
    stores = []
    for spec in specs:
        if SamplePool.is_pool(spec):
            members = " ".join(SamplePool.open(spec).members)
            raise DiffauditError(f"--samples {spec} is a pool itself; pool its stores instead ({members})")
        store = SampleStore.open(spec)
        pending = store.pending()
        if pending:
            raise DiffauditError(f"--samples {spec}: {len(pending)} of {store.n_shards} shards are not finished; finish "
                                 "sampling (re-run `diffaudit sample` with the same flags), then pool it")
        stores.append(store)
    return stores


def _refuse_repeats(specs: list[str], identities: list[str]) -> None:
    """Refuse a store given twice (one path twice, or two copies of one store): its generations would count
    as another model's, and the pooled count would not grow by them."""
    seen: dict[str, int] = {}
    for k, identity in enumerate(identities):
        if identity in seen:
            j = seen[identity]
            same = "is given twice" if specs[j] == specs[k] else f"and {specs[k]} hold the same generations"
            raise DiffauditError(f"--samples {specs[j]} {same} (store identity {identity}): pool each model's store once")
        seen[identity] = k


def _warn_shared_seeds(specs: list[str], stores: list[SampleStore]) -> None:
    """Say which stores were sampled with one seed: generation p<P>-i<I> starts from the same noise in each, so
    their generations are not independent draws (the paper samples with fresh seeds)."""
    by_seed: dict[Any, list[int]] = {}
    for k, store in enumerate(stores):
        by_seed.setdefault(store.manifest.get("seed"), []).append(k)
    for seed, ks in by_seed.items():
        if len(ks) > 1:
            names = ", ".join(printable(specs[k]) for k in ks[:3]) + (", ..." if len(ks) > 3 else "")
            warning_line(NAME, f"{len(ks)} stores ({names}) were sampled with --seed {seed}: each one's generation "
                               "p<P>-i<I> starts from the same noise, so they are not independent draws; sample each "
                               "model with its own --seed for the paper's fresh seeds")


def run(args: argparse.Namespace) -> int:
    specs = [canonical_path(s) for s in args.samples]
    stores = _open_members(specs)  # first: a pattern the shell matched to nothing is "does not exist"
    if len(specs) < MIN_MEMBERS:
        raise DiffauditError(f"--samples: a pool needs at least {MIN_MEMBERS} stores (one store is read as itself)")
    identities = [s.identity for s in stores]
    _refuse_repeats(specs, identities)
    check_alike(stores, specs, where="--samples")
    settings = {"members": specs, "members_identity": identities}
    out, resumed = prepare_out_dir(args.out, NAME, settings, fresh=args.fresh, writes=(POOL_FILE,))
    if emit_finished(args, out, resumed, _summary):
        return 0
    _warn_shared_seeds(specs, stores)
    write_json_atomic(out / POOL_FILE, {"schema_version": 1, "members": specs, "identities": identities})
    pool = SamplePool.open(out)
    members = [{"samples": spec, "n_generations": int(store.manifest["n_total"]),
                "model": (store.manifest.get("sampler") or {}).get("model"), "seed": store.manifest.get("seed")}
               for spec, store in zip(specs, stores)]
    result = write_result(out / "result.json", NAME, settings, {}, n_members=len(specs), members=members,
                          n_generations=sum(m["n_generations"] for m in members), samples_identity=pool.identity,
                          out=str(out))
    emit(args, result, _summary(result))
    return 0


def _summary(r: dict[str, Any]) -> str:
    return (f"pool: {counted(r['n_generations'], 'generation')} of {r['n_members']} stores -> {r['out']}; give it as "
            f"--samples to `diffaudit verify` for the unique count over all of them")
