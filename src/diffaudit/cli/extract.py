"""``diffaudit extract``: generate-and-filter (paper §4.1) and its black-box unconditional mode."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from diffaudit.attacks.extraction.blackbox import (
    DEFAULT_K_NEIGHBORS,
    DEFAULT_MAX_COMPONENT,
    NeighbourEdges,
    extract_unconditional,
    too_large_a_clique,
)
from diffaudit.attacks.extraction.calibration import (
    CalibrationPoint, best_point, calibrate, check_clique_sizes, parse_float_list, parse_int_list,
)
from diffaudit.attacks.extraction.cliques import DEFAULT_MAX_EXPANSIONS
from diffaudit.attacks.extraction.filter import FilterSettings, PromptResult, filter_prompts, group_by_prompt, rank_prompts
from diffaudit.attacks.extraction.graph import DEFAULT_EDGE_THRESHOLD, DEFAULT_MIN_CLIQUE, check_threshold, near_duplicate_graph
from diffaudit.attacks.extraction.grid import GRID_HELP, check_grid, resolve_grid
from diffaudit.attacks.extraction.inputs import read_generations
from diffaudit.attacks.extraction.knn_cache import iter_cached_knn
from diffaudit.cli.common import (
    add_run_args, canonical_settings, current_stage, devices_record, emit, emit_finished, ray_address, run_devices,
    upgrading_paths,
)
from diffaudit.cli.ray_work import ImagesRecipe, knn_on_ray
from diffaudit.core.device import resolve_device
from diffaudit.core.errors import DiffauditError
from diffaudit.core.faults import fault_point
from diffaudit.core.identity import text_digest
from diffaudit.core.io import make_private_dir, read_json, read_text, write_json_atomic
from diffaudit.core.outdir import prepare_out_dir, recorded_settings
from diffaudit.core.progress import Timer, progress_bar, stage_line, warning_line
from diffaudit.core.ray_pool import RAY_HELP, connect
from diffaudit.core.results import write_result
from diffaudit.data.dataset import ImageDataset
from diffaudit.distances.knn_backends import KNN_BACKENDS
from diffaudit.store import sampler_classes, samples_identity
from diffaudit.store.location import check_reachable_by_workers
from diffaudit.report.fmt import counted

NAME = "extract"
HELP = "find memorized generations: near-duplicate cliques per prompt (tiled l2), or among unconditional samples"
DESCRIPTION = (
    "Generate-and-filter (Carlini et al. 2023, Sec. 4.1). Conditional samples (with prompts): for each prompt, "
    "a graph over its generations with an edge where the tiled l2 (max over --grid x --grid same-position tiles, "
    "4x4 unless the images are under 16 px) is <= "
    "--edge-threshold; the prompt is flagged when the maximum clique has >= --min-clique members; flagged prompts "
    "are ranked by the clique's mean internal distance and represented by its medoid. Unconditional samples (no "
    "prompts): exact nearest neighbours among the generations give a sparse near-duplicate graph, and every clique "
    "of >= --min-clique inside its connected components is reported, without the training set: each clique holds "
    "candidate copies of one image, and several cliques can copy the same training image (`diffaudit verify "
    "--from-extract` maps them to training images). --calibrate GROUND_TRUTH sweeps the edge threshold and clique "
    "size and reports precision/recall (a line here, a table in `diffaudit report`). "
    "Writes result.json in --out; follow with `diffaudit verify --from-extract OUT/result.json`."
)

#: Prompts per resumable part file.
PROMPTS_PER_PART = 64
#: The sweeps of ``--calibrate`` when not given.
DEFAULT_SWEEP_THRESHOLDS = "0.025,0.05,0.075,0.1,0.125,0.15,0.2"
DEFAULT_SWEEP_MIN_CLIQUE = "2,3,5,10,20,50"
#: Ground-truth prompts that are no prompt of the samples named in the warning.
UNKNOWN_SHOWN = 3
#: Clique sizes listed in the last line of an unconditional extract.
SIZES_SHOWN = 10
#: Settings that hold the path of an input (recorded canonical, see :func:`~diffaudit.cli.common.canonical_path`).
PATH_SETTINGS = ("samples", "calibrate")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", required=True, help="generations: a sample store (a folder, or an object-store URL such "
                                                    "as s3://bucket/store), a pool of stores (`diffaudit pool`), image "
                                                    "folder, WebDataset shards or .npz "
                                                    "(uint8 `images`, optional per-image `prompts`)")
    add_run_args(p)
    g = p.add_argument_group("filter")
    g.add_argument("--mode", choices=("auto", "conditional", "unconditional"), default="auto",
                   help="auto: conditional when the samples carry prompts")
    g.add_argument("--edge-threshold", type=float, default=DEFAULT_EDGE_THRESHOLD,
                   help="edge when tiled l2 <= this, in (0, 1] (not published by the paper; calibrate it)")
    g.add_argument("--min-clique", type=int, default=DEFAULT_MIN_CLIQUE, help="flag when the largest clique has at least this many members")
    g.add_argument("--grid", type=int, default=None, help=GRID_HELP + "; as `diffaudit audit` uses it")
    g.add_argument("--max-expansions", type=int, default=DEFAULT_MAX_EXPANSIONS,
                   help="node-expansion bound of each clique search (deterministic; results say when it was hit)")
    g.add_argument("--ray", type=ray_address, default=None, metavar="ADDRESS",
                   help=f"filter the prompts (conditional) or search the nearest generations (unconditional) on a Ray "
                        f"cluster: {RAY_HELP}; every node reads --samples at the same path and writes into --out "
                        "(a shared filesystem); the result is the one a single process gives")
    b = p.add_argument_group("unconditional (black-box) mode")
    b.add_argument("--k-neighbors", type=int, default=DEFAULT_K_NEIGHBORS, help="nearest neighbours per generation in the sparse graph")
    b.add_argument("--max-component", type=int, default=DEFAULT_MAX_COMPONENT, help="largest connected component analysed in full")
    b.add_argument("--backend", choices=sorted(KNN_BACKENDS), default="torch", help="exact nearest-neighbour backend")
    c = p.add_argument_group("calibration")
    c.add_argument("--calibrate", default=None, metavar="GROUND_TRUTH",
                   help="memorized prompts: a JSON list (or {\"memorized\": [...]}) or a text file, one prompt per line")
    c.add_argument("--sweep-thresholds", default=None,
                   help=f"edge thresholds to sweep, with --calibrate only (default: {DEFAULT_SWEEP_THRESHOLDS})")
    c.add_argument("--sweep-min-clique", default=None,
                   help=f"clique sizes (>= 2) to sweep, with --calibrate only (default: {DEFAULT_SWEEP_MIN_CLIQUE})")


def _load_ground_truth(path: str) -> set[str]:
    """The memorized prompts ``--calibrate`` names: a JSON list (of text, or of class indices, read as the
    decimal prompts class-conditional samples carry), ``{"memorized": [...]}``, or a text file of one per line."""
    p = Path(path)
    if not p.is_file():
        raise DiffauditError(f"--calibrate {p}: file does not exist")
    if p.suffix.lower() == ".json":
        data = read_json(p)
        if isinstance(data, dict):
            data = data.get("memorized")
        # a class-conditional model's prompts are its class indices: [1, 4] names the prompts "1" and "4"
        if not isinstance(data, list) or not all(isinstance(x, str) or (isinstance(x, int) and not isinstance(x, bool))
                                                 for x in data):
            raise DiffauditError(f"--calibrate {p}: expected a JSON list of prompts (text, or a class-conditional model's "
                                 f"class indices) or {{\"memorized\": [prompts]}}")
        return {str(x) for x in data}
    lines = read_text(p, "--calibrate").splitlines()
    return {ln for ln in (x.strip() for x in lines) if ln}


def _sweeps(args: argparse.Namespace) -> tuple[list[float], list[int]]:
    """The edge thresholds and clique sizes ``--calibrate`` sweeps (the defaults where not given), each
    checked before any work; without ``--calibrate`` a sweep given is refused (it applies to nothing else)."""
    if not args.calibrate:
        for flag, value in (("--sweep-thresholds", args.sweep_thresholds), ("--sweep-min-clique", args.sweep_min_clique)):
            if value is not None:
                raise DiffauditError(f"{flag} applies only with --calibrate GROUND_TRUTH (the precision/recall sweep): "
                                     "add --calibrate or drop it")
        return [], []
    given = DEFAULT_SWEEP_THRESHOLDS if args.sweep_thresholds is None else args.sweep_thresholds
    thresholds = parse_float_list(given, "--sweep-thresholds")
    for t in thresholds:
        check_threshold(t, "--sweep-thresholds")
    sizes = parse_int_list(DEFAULT_SWEEP_MIN_CLIQUE if args.sweep_min_clique is None else args.sweep_min_clique,
                           "--sweep-min-clique")
    # as the sweep takes them (sorted, each once): so they are recorded, and a resume in another order is the same
    return sorted(set(thresholds)), check_clique_sizes(sizes)


def _names(prompts: list[str]) -> str:
    """A few prompts, quoted and cut short, for a one-line message: "'a cat', 'a dog', ... (5 in all)"."""
    shown = ", ".join(repr(p if len(p) <= 40 else p[:39] + "...") for p in prompts[:UNKNOWN_SHOWN])
    return shown + (f", ... ({len(prompts):,} in all)" if len(prompts) > UNKNOWN_SHOWN else "")


def _check_ground_truth(truth: set[str], prompts: set[str], path: str) -> None:
    """Refuse a ground truth none of whose prompts is a prompt of the samples (every memorized label
    false: the sweep would measure nothing); say which of its prompts the samples lack (they are left
    out of the sweep's recall)."""
    if not truth:
        raise DiffauditError(f"--calibrate {path}: names no prompt, so there is nothing to calibrate against")
    unknown = sorted(truth - prompts)
    if len(unknown) == len(truth):
        raise DiffauditError(f"--calibrate {path}: none of its {counted(len(truth), 'prompt')} is a prompt of --samples "
                             f"({_names(unknown)}), so the precision/recall sweep would be meaningless: the ground "
                             "truth must name prompts exactly as the samples carry them")
    if unknown:
        one = len(unknown) == 1
        warning_line("extract", f"{len(unknown):,} of the {len(truth):,} --calibrate prompts {'is' if one else 'are'} "
                     f"no prompt of --samples ({_names(unknown)}): the calibration leaves {'it' if one else 'them'} out "
                     f"(recall counts the {len(truth) - len(unknown):,} that are)")


def _precision_recall(p: CalibrationPoint) -> str:
    precision = "n/a (nothing flagged)" if p.precision is None else f"{p.precision:.3f}"
    recall = "n/a" if p.recall is None else f"{p.recall:.3f}"
    return f"precision {precision}, recall {recall}"


def _calibration_line(points: list[CalibrationPoint], cal: dict[str, Any], fs: FilterSettings) -> str:
    """The calibration in one line: at the edge threshold of the best point (highest F1, see
    :func:`~diffaudit.attacks.extraction.calibration.best_point`), precision and recall per swept clique size,
    and this run's own settings when swept."""
    head = f"extract: calibration against {counted(cal['n_memorized'], 'memorized prompt')}: "
    tail = f'; all {len(points):,} sweep points in result.json ("calibration")'
    best = best_point(points)
    if best is None:
        return (head + "no swept edge threshold and clique size flags a memorized prompt (recall 0 throughout): "
                "sweep larger --sweep-thresholds or smaller --sweep-min-clique" + tail)
    row = [p for p in points if p.edge_threshold == best.edge_threshold]
    sizes = "; ".join(f"{p.min_clique} -> {_precision_recall(p)}{' (best F1)' if p is best else ''}" for p in row)
    text = head + f"at edge threshold {best.edge_threshold:g}, min clique {sizes}"
    own = next((p for p in points if p.edge_threshold == fs.edge_threshold and p.min_clique == fs.min_clique), None)
    if own is not None and own.edge_threshold != best.edge_threshold:
        text += (f"; this run's --edge-threshold {fs.edge_threshold:g} --min-clique {fs.min_clique}: "
                 f"{_precision_recall(own)}")
    return text + tail


def _limit_lines(res: Any, k: int, max_component: int) -> list[str]:
    """What the unconditional search may have missed: components cut to ``--max-component`` and
    saturated generations (blackbox module docstring), one line each; none when neither happened."""
    lines = []
    cut = res.n_truncated
    if cut:
        they = "it" if cut == 1 else "them"
        lines.append(f"extract: {counted(cut, 'connected component')} larger than --max-component {max_component:,} "
                     f"{'was' if cut == 1 else 'were'} cut to {'its' if cut == 1 else 'their'} {max_component:,} "
                     f"best-connected generations, so cliques among the generations cut away may be missed: raise "
                     f"--max-component to analyse {they} in full")
    if res.n_saturated:
        n = res.n_saturated
        lines.append(f"extract: {counted(n, 'generation')} {'is' if n == 1 else 'are'} saturated (all {k} nearest "
                     f"neighbours within --edge-threshold), so near-duplicates beyond the {k} nearest may be missed: "
                     "raise --k-neighbors")
    return lines


def _settings(args: argparse.Namespace, mode: str, ds: ImageDataset, grid: int) -> dict[str, Any]:
    """The settings recorded and compared on a resume; ``grid`` is the one used (the default resolved)."""
    s: dict[str, Any] = {
        "samples": str(args.samples), "samples_identity": samples_identity(args.samples, ds), "mode": mode,
        "edge_threshold": args.edge_threshold, "min_clique": args.min_clique,
        "grid": grid, "max_expansions": args.max_expansions,
    }
    if mode == "unconditional":
        s.update(k_neighbors=args.k_neighbors, max_component=args.max_component)
    if args.calibrate:
        thresholds, sizes = args._sweeps
        s.update(calibrate=str(args.calibrate), calibrate_digest=text_digest(json.dumps(sorted(args._ground_truth))),
                 sweep_thresholds=thresholds, sweep_min_clique=sizes)
    return canonical_settings(s, PATH_SETTINGS)


def _upgrade_settings(old: dict[str, Any]) -> dict[str, Any]:
    """An earlier record read as today's: it kept the swept thresholds and clique sizes in the order given."""
    sweeps = {k: sorted(set(old[k])) for k in ("sweep_thresholds", "sweep_min_clique") if isinstance(old.get(k), list)}
    return {**old, **sweeps}


def _part_path(parts_dir: Path, part: int) -> Path:
    return Path(parts_dir) / f"part-{part:06d}.json"


def _read_part(path: Path, chunk: list[tuple[str, Any]]) -> list[PromptResult] | None:
    """The finished part at ``path`` when it holds the prompts of ``chunk``, else None (to compute)."""
    if not path.exists():
        return None
    done = [PromptResult(**d) for d in read_json(path)]
    return done if [d.prompt for d in done] == [p for p, _ in chunk] else None


def _compute_part(ds: ImageDataset, groups: list, part: int, per_part: int, fs: FilterSettings, device, parts_dir: Path,
                  progress=None) -> list[PromptResult]:
    """Filter the prompts of part ``part`` (``per_part`` of ``groups`` a part) and write its file."""
    lo = part * per_part
    chunk = groups[lo:lo + per_part]
    results = []
    work = ((lo + j, prompt, ds.images[idx], [ds.keys[i] for i in idx]) for j, (prompt, idx) in enumerate(chunk))
    for r in filter_prompts(work, settings=fs, device=device):  # a GPU computes the next graph meanwhile
        results.append(r)
        if progress is not None:
            progress(1)
    write_json_atomic(_part_path(parts_dir, part), [r.to_dict() for r in results])
    fault_point("extract-part")
    return results


def _pending_parts(groups: list, parts_dir: Path) -> list[int]:
    return [part for part, lo in enumerate(range(0, len(groups), PROMPTS_PER_PART))
            if _read_part(_part_path(parts_dir, part), groups[lo:lo + PROMPTS_PER_PART]) is None]


class FilterPartWorker:
    """A Ray worker of ``extract --ray``: reads the generations on its node and filters the parts (of
    ``per_part`` prompts, as the command splits them) it is handed, writing each part's file as the
    command does."""

    def __init__(self, samples: ImagesRecipe, per_part: int, fs: FilterSettings, parts_dir: str, device_type: str,
                 threads: int):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.ds = samples.load()
        self.groups = group_by_prompt(self.ds.captions)
        self.per_part, self.fs, self.parts_dir, self.device = per_part, fs, Path(parts_dir), resolve_device(device_type)

    def fill(self, part: int) -> int:
        lo = part * self.per_part
        if _read_part(_part_path(self.parts_dir, part), self.groups[lo:lo + self.per_part]) is None:  # not a retry
            _compute_part(self.ds, self.groups, part, self.per_part, self.fs, self.device, self.parts_dir)
        return part


def _filter_on_ray(args, recipe: ImagesRecipe, groups: list, fs: FilterSettings, parts_dir: Path, device) -> None:
    """Filter the pending parts on the Ray cluster at ``--ray`` (one worker per GPU, or per CPU), whose
    workers read the generations as ``recipe`` says."""
    from diffaudit.core.ray_pool import run_parts

    parts_dir = parts_dir.resolve()  # the workers' nodes write there, whatever their working directory
    todo = _pending_parts(groups, parts_dir)
    if not todo:
        return
    make_private_dir(parts_dir)
    sizes = {part: len(groups[part * PROMPTS_PER_PART:(part + 1) * PROMPTS_PER_PART]) for part in todo}
    with Timer() as t:
        n = run_parts(args.ray, FilterPartWorker, (recipe, PROMPTS_PER_PART, fs, str(parts_dir), device.type),
                      lambda: _pending_parts(groups, parts_dir), label="extract: filter prompts (ray)",
                      size=sizes.__getitem__, total=sum(sizes.values()), unit="prompt", use_gpu=device.type == "cuda")
    stage_line(f"extract: {sum(sizes.values())} prompts filtered on Ray ({n} worker{'s' if n != 1 else ''}, "
               f"{t.seconds:.1f} s)")


def _conditional(args, ds, fs: FilterSettings, out: Path, device, recipe: ImagesRecipe | None,
                 workers_device) -> dict[str, Any]:
    groups = group_by_prompt(ds.captions)
    short = [len(idx) for _, idx in groups if len(idx) < fs.min_clique]  # prompts that cannot be flagged
    if short:
        more = ("a larger --n-samples, which the audit splits among the prompts: "
                f"{fs.min_clique * len(groups):,} make {fs.min_clique} each" if current_stage() is not None
                else "`sample --per-prompt`")
        warning_line("extract", f"{len(short):,} of {len(groups):,} prompts have fewer generations than --min-clique "
                     f"{fs.min_clique} (as few as {min(short)}), so none of them can be flagged and their not being flagged "
                     f"says nothing: generate more per prompt ({more}; the paper: 500), or lower --min-clique")
    parts_dir = out / "parts"
    if recipe is not None:
        _filter_on_ray(args, recipe, groups, fs, parts_dir, workers_device)
    results: list[PromptResult] = []
    with Timer() as t, progress_bar("extract: filter prompts", len(groups), unit="prompt") as bar:
        for part, lo in enumerate(range(0, len(groups), PROMPTS_PER_PART)):
            chunk = groups[lo:lo + PROMPTS_PER_PART]
            done = _read_part(_part_path(parts_dir, part), chunk)
            if done is None:
                done = _compute_part(ds, groups, part, PROMPTS_PER_PART, fs, device, parts_dir, progress=bar.advance)
            else:
                bar.advance(len(chunk))
            results += done
    ranked = rank_prompts(results)
    n_flagged = sum(r.flagged for r in ranked)
    stage_line(f"extract: {n_flagged:,} of {counted(len(ranked), 'prompt')} flagged ({t.seconds:.1f} s)")
    fields: dict[str, Any] = {
        "mode": "conditional", "n_samples": len(ds), "n_prompts": len(ranked), "n_flagged": n_flagged,
        # a class-conditional model's prompts are its class indices: the report calls them classes
        "prompt_kind": "class" if sampler_classes(str(args.samples)) else "text",
        "n_prompts_below_min_clique": len(short),
        "bound_hit": any(r.bound_hit for r in ranked), "prompts": [r.to_dict() for r in ranked],
    }
    if args.calibrate:
        truth = args._ground_truth
        dists = []
        with progress_bar("extract: calibration distances", len(groups), unit="prompt") as bar:
            for _, idx in groups:
                # float64: every distance exact (the graph refines only those near its own threshold),
                # since the sweep compares each with several thresholds
                dists.append(near_duplicate_graph(ds.images[idx], threshold=1.0, grid=fs.grid, device=device,
                                                  compute="float64").distances)
                bar.advance(1)
        thresholds, sizes = args._sweeps
        points = calibrate(dists, [p in truth for p, _ in groups], thresholds=thresholds, clique_sizes=sizes,
                           max_expansions=fs.max_expansions)
        known = {p for p, _ in groups}
        fields["calibration"] = {
            "n_memorized": len(truth & known), "unknown_prompts": len(truth - known),
            "points": [pt.to_dict() for pt in points],
        }
        stage_line(_calibration_line(points, fields["calibration"], fs))
    return fields


def _unconditional(args, ds, fs: FilterSettings, out: Path, device, recipe: ImagesRecipe | None,
                   workers_device) -> dict[str, Any]:
    n = len(ds)
    if n < 2:
        raise DiffauditError(f"{args.samples}: {n} sample(s); the unconditional mode needs at least 2")
    k = min(args.k_neighbors, n - 1)
    if recipe is not None:
        knn_on_ray(args.ray, ds.images, recipe, None, k, out / "knn", device=workers_device, backend=args.backend,
                   label="extract: nearest generations", exclude_self=True, fault_name="extract-knn")
    with Timer() as t, progress_bar("extract: nearest generations", n, unit="img") as bar:
        # only the pairs within the edge threshold are kept, chunk by chunk (never the (N, k) lists)
        chunks = iter_cached_knn(ds.images, ds.images, k, out / "knn", exclude_self=True, backend=args.backend,
                                 device=device, fault_name="extract-knn", progress=bar.advance)
        edges = NeighbourEdges.from_chunks(n, chunks, fs.edge_threshold)
    stage_line(f"extract: exact {k}-NN among {n} generations ({t.seconds:.1f} s)")
    with Timer() as t, progress_bar("extract: cliques per component", None, unit="comp") as bar:
        res = extract_unconditional(ds.images, ds.keys, settings=fs, k_neighbors=k, max_component=args.max_component,
                                    knn=edges, device=device, progress=bar.advance)
    stage_line(f"extract: {counted(len(res.groups), 'clique')} of >= {fs.min_clique} in "
               f"{counted(res.n_components, 'component')} ({t.seconds:.1f} s)")
    for line in _limit_lines(res, k, args.max_component):
        stage_line(line)
    return {
        "mode": "unconditional", "n_samples": n, "n_groups": len(res.groups), "bound_hit": res.bound_hit,
        "k_neighbors": k, "n_candidate_edges": res.n_candidate_edges, "n_components": res.n_components,
        "n_saturated": res.n_saturated, "n_truncated_components": res.n_truncated,
        "groups": [g.to_dict() for g in res.groups],
    }


def _summary(r: dict[str, Any], out: Path) -> str:
    if r["mode"] == "conditional":
        top = next((p for p in r["prompts"] if p["flagged"]), None)
        extra = f"; top: {top['prompt'][:60]!r} (clique {top['largest_clique']}, medoid {top['medoid']})" if top else ""
        return (f"extract: {r['n_flagged']:,} of {counted(r['n_prompts'], 'prompt')} flagged{extra} -> "
                f"{out / 'result.json'}")
    sizes = ", ".join(str(g["size"]) for g in r["groups"][:SIZES_SHOWN])
    more = len(r["groups"]) - SIZES_SHOWN
    found = f" (sizes {sizes}{f', ... and {more:,} more' if more > 0 else ''})" if sizes else ""
    return f"extract: {counted(r['n_groups'], 'clique')} of near-identical generations{found} -> {out / 'result.json'}"


def _grid(args: argparse.Namespace, image_shape) -> int:
    """The tile grid: ``--grid`` as given; without it, the one ``--out`` recorded (a folder made when the
    default was 4 for every size resumes as it was made; ``--fresh`` starts over), else the audit's rule
    (:func:`~diffaudit.attacks.extraction.grid.default_grid`)."""
    if args.grid is None and not args.fresh:
        recorded = (recorded_settings(args.out, NAME) or {}).get("grid")
        if isinstance(recorded, int) and recorded >= 1:
            return recorded
    return resolve_grid(args.grid, image_shape)


def run(args: argparse.Namespace) -> int:
    args._sweeps = _sweeps(args)  # a malformed sweep, or one without --calibrate, before anything is read or reached
    if args.ray:  # a cluster that cannot be reached is an error before anything is read or written
        check_reachable_by_workers(args.samples, "--samples")
        connect(args.ray)
    FilterSettings(args.edge_threshold, args.min_clique, args.grid, args.max_expansions).validate()
    if args.k_neighbors < 1:
        raise DiffauditError(f"--k-neighbors must be at least 1, got {args.k_neighbors}")
    if args.max_component < args.min_clique:
        raise DiffauditError(too_large_a_clique(args.min_clique, args.max_component))
    device, workers_device = run_devices(args, "extract")
    ds = read_generations(args.samples)
    grid = check_grid(_grid(args, ds.image_shape), ds.image_shape)  # before any work, whatever the data
    fs = FilterSettings(args.edge_threshold, args.min_clique, grid, args.max_expansions)
    mode = args.mode
    if mode == "auto":
        mode = "conditional" if ds.captions is not None else "unconditional"
    if mode == "conditional" and ds.captions is None:
        raise DiffauditError(f"--mode conditional: {args.samples} carries no prompts; use --mode unconditional")
    if mode == "unconditional" and len(ds) < args.min_clique:  # (a prompt with too few is said in its result)
        warning_line("extract", f"{len(ds):,} generation{'s' if len(ds) != 1 else ''} cannot hold a clique of --min-clique "
                                f"{args.min_clique:,}, so none can be flagged: generate more, or lower --min-clique")
    if args.calibrate:
        if mode != "conditional":
            raise DiffauditError("--calibrate needs prompts (conditional samples): the ground truth names memorized prompts")
        args._ground_truth = _load_ground_truth(args.calibrate)
        _check_ground_truth(args._ground_truth, set(ds.captions), args.calibrate)
    settings = _settings(args, mode, ds, grid)
    out, resumed = prepare_out_dir(args.out, NAME, settings, fresh=args.fresh,
                                   upgrade=upgrading_paths(PATH_SETTINGS, then=_upgrade_settings))
    if emit_finished(args, out, resumed, lambda r: _summary(r, out)):
        return 0
    # with --ray, the workers read --samples where the settings say (absolute) and check its identity
    recipe = ImagesRecipe("generations", settings["samples"], settings["samples_identity"]) if args.ray else None
    fields = (_conditional if mode == "conditional" else _unconditional)(args, ds, fs, out, device, recipe, workers_device)
    fields["score_direction"] = ("largest_clique: larger = more likely memorized; mean_distance (tiled l2 inside the "
                                 "clique): smaller = tighter, ranked first")
    fields["runtime"] = {**devices_record(args, device, workers_device), "backend": args.backend}
    result = write_result(out / "result.json", NAME, settings, {"seed": args.seed}, **fields)
    emit(args, result, _summary(result, out))
    return 0
