"""Run every benchmark and print one JSON object {name: result}.

    python bench/run_all.py            # sizes for the machine: GPU sizes on CUDA, small ones on the CPU
    python bench/run_all.py --only sampling,knn
    python bench/run_all.py --only knn,rerank --limits knn=150,rerank=75 --out-dir bench-out

Each benchmark runs in its own process; a failure, a time-out or output that cannot be read is
recorded for that benchmark (``error``, ``returncode``, the last lines of its stderr) and the others
still run; the exit status is then 1. With ``--out-dir DIR`` each benchmark writes its result to ``DIR/bench-<name>.json`` as it
goes (partial results after each finished comparison, ``"partial": true``; the final one at the end),
and ``DIR/bench-all.json`` is rewritten after every benchmark with all results so far: a run cut short
keeps everything finished before. Without ``--out-dir`` the files go to a temporary folder. The GPU
sizes are those of docs/performance.md.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULT_ENV = "DIFFAUDIT_BENCH_RESULT"  # the variable bench/_common.py writes each result file to
CIFAR_UNET = ["--preset", "ddpm-cifar10", "--image-size", "32", "--channels", "3"]
GPU = {
    "sampling": ["bench_sampling.py", *CIFAR_UNET, "--batch", "1024", "--steps", "50", "--repeats", "1"],
    "training": ["bench_training.py", *CIFAR_UNET, "--batch", "128", "--steps", "60", "--n", "4096"],
    # faiss-cpu's two baselines are skipped here: the other timings fill this call's limit (with a carried
    # faiss-cpu wheel they ran in a separate call, docs/performance.md), and bench_knn also records them
    # as skipped by itself wherever faiss cannot be imported.
    "knn": ["bench_knn.py", "--synthetic", "--queries", "1048576", "--refs", "50000", "--k", "50", "--peak-tflops", "989",
            "--peak-int8-tops", "1979", "--without-prefetch", "--unfused", "--also-compute", "bf16",
            "--query-blocks", "21845,43690", "--profile", "--skip", "faiss_cpu,diffaudit_faiss"],
    "rerank": ["bench_rerank.py", "--queries", "1048576", "--refs", "50000", "--k", "50", "--repeats", "1"],
    "loss": ["bench_loss.py", *CIFAR_UNET, "--n", "4096", "--models", "2", "--draws", "4", "--batch", "1024",
             "--baseline-batches", "256,1024"],
    "inpaint": ["bench_inpaint.py", *CIFAR_UNET, "--targets", "16", "--baseline-targets", "2", "--n-inpaint", "128",
                "--batch", "2048", "--steps", "20", "--repeats", "1"],
    "filter": ["bench_filter.py", "--prompts", "50", "--generations", "500", "--size", "512", "--also-compute", "bf16",
               "--previous-paths"],
    "stable_diffusion": ["bench_sd.py", "--size", "512", "--batch", "8", "--steps", "20", "--repeats", "1",
                         "--peak-tflops", "989", "--fuse-qkv"],
    "verify_memory": ["bench_verify_memory.py", "--sizes", "16384,131072", "--train", "500"],  # CPU: verify's peak RSS
    "batch_fit": ["bench_batch_fit.py", *CIFAR_UNET, "--steps", "50", "--sd"],
}
CPU = {
    "sampling": ["bench_sampling.py", "--batch", "64", "--steps", "10"],
    "training": ["bench_training.py", "--batch", "32", "--steps", "40", "--n", "256"],
    "knn": ["bench_knn.py", "--queries", "2048", "--refs", "5000", "--k", "50", "--also-compute", "float64"],
    "rerank": ["bench_rerank.py", "--queries", "4096", "--refs", "5000", "--k", "50"],
    "loss": ["bench_loss.py"],
    "inpaint": ["bench_inpaint.py"],
    "filter": ["bench_filter.py", "--also-compute", "float64"],
    "stable_diffusion": ["bench_sd.py", "--tiny", "--size", "64", "--batch", "2", "--steps", "4"],
    "ray": ["bench_ray.py", "--n", "128", "--steps", "10"],
    "ray_verify": ["bench_ray.py", "--job", "verify", "--n", "16384", "--train", "20000"],
    "object_store": ["bench_object_store.py", "--shards", "64"],  # moto's S3 server: the test extra installs it
    "verify_memory": ["bench_verify_memory.py", "--sizes", "4096,16384", "--train", "500"],  # peak RSS of verify
    "batch_fit": ["bench_batch_fit.py", "--steps", "2", "--n", "64", "--tiny-sd", "--sd-size", "32", "--sd-steps", "2",
                  "--sd-n", "4"],  # off CUDA auto is the default: a smoke run
}


def parse_stdout(text: str) -> dict | None:
    """The benchmark's JSON object from its stdout: the last top-level ``{`` (at the start of a line)
    from which a whole JSON object decodes; stray text before or after it is ignored. None if none."""
    dec = json.JSONDecoder()
    starts = [0] if text.startswith("{") else []
    pos = text.find("\n{")
    while pos >= 0:
        starts.append(pos + 1)
        pos = text.find("\n{", pos + 1)
    for start in reversed(starts):
        try:
            obj, _ = dec.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def read_result_file(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _tail(text: str | bytes | None, n: int = 8) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "").strip().splitlines()[-n:]


def run_one(name: str, argv: list[str], timeout: float, result_path: Path) -> dict:
    """Run one benchmark; never raises for the benchmark's own failures."""
    result_path.unlink(missing_ok=True)
    env = {**os.environ, RESULT_ENV: str(result_path)}
    t0 = time.perf_counter()
    stdout, stderr, rc, timed_out = "", "", None, False
    try:
        # A new session, hence its own process group (process_group= needs Python 3.11), so that a
        # time-out ends its helpers too (torch.compile's workers), which would otherwise hold the pipes open.
        proc = subprocess.Popen([sys.executable, *argv], cwd=HERE, env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        return {"error": f"could not start: {exc}", "wall_seconds": time.perf_counter() - t0}
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    from_file = read_result_file(result_path)
    final = from_file if from_file is not None and not from_file.get("partial") else None
    if final is None and rc == 0:
        final = parse_stdout(stdout)
    if final is not None and rc == 0 and not timed_out:
        return {**final, "wall_seconds": wall}
    # Something went wrong: keep what was measured (partial file, or a final one) and say what.
    out = dict(final or from_file or {})
    if timed_out:
        out["error"] = f"timed out after {timeout:g}s"
    elif rc != 0:
        out["error"] = _tail(stderr, 1) or ["failed"]
        out["returncode"] = rc
    else:
        out["error"] = "no JSON result in its output"
        out["stdout_tail"] = _tail(stdout)
    out["stderr_tail"] = _tail(stderr)
    out["wall_seconds"] = wall
    return out


def parse_limits(text: str) -> dict[str, float]:
    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, _, sec = item.partition("=")
        try:
            out[name.strip()] = float(sec)
        except ValueError:
            raise SystemExit(f"--limits: {item!r} is not NAME=SECONDS") from None
    return out


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def benchmarks_listing() -> str:
    """Each benchmark's name, script and what it measures (the first line of the script's docstring), for
    ``--help``, with the tables it runs in."""
    lines = ["benchmarks (name: script, what it measures; [gpu], [cpu] or both: the tables that run it):"]
    for name in dict.fromkeys([*GPU, *CPU]):
        script, *script_args = GPU.get(name) or CPU[name]
        job = script_args[script_args.index("--job") + 1] if "--job" in script_args else None
        path = HERE / script
        doc = (ast.get_docstring(ast.parse(path.read_text())) if path.is_file() else None) or "(no docstring)"
        first = " ".join(doc.split("\n\n")[0].split())  # its first paragraph, as one line
        where = ", ".join(t for t, table in (("gpu", GPU), ("cpu", CPU)) if name in table)
        lines.append(f"  {name}: {script}{f' --job {job}' if job else ''} [{where}]")
        lines.extend(textwrap.wrap(first, width=100, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, epilog=benchmarks_listing(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated benchmark names, listed below (run in this order)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per benchmark (default for those not in --limits)")
    ap.add_argument("--limits", default="", help="per-benchmark seconds, e.g. knn=150,rerank=75")
    ap.add_argument("--table", choices=("auto", "gpu", "cpu"), default="auto",
                    help="which sizes: auto = gpu where CUDA is available, else cpu")
    ap.add_argument("--out-dir", default=None, help="folder for bench-<name>.json (written as each goes) and bench-all.json")
    a = ap.parse_args(argv)
    gpu = torch.cuda.is_available() if a.table == "auto" else a.table == "gpu"
    table = GPU if gpu else CPU
    limits = parse_limits(a.limits)
    wanted = [n.strip() for n in a.only.split(",") if n.strip()]
    unknown = [n for n in wanted + list(limits) if n not in table]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {', '.join(unknown)}; these run here: {', '.join(table)}")
    names = wanted or list(table)
    tmp = None
    if a.out_dir:
        out_dir = Path(a.out_dir).resolve()  # each benchmark runs in bench/: a relative folder would be read from there
        out_dir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="diffaudit-bench-")
        out_dir = Path(tmp.name)
    results: dict = {}
    for name in names:
        limit = limits.get(name, a.timeout)
        print(f"== {name} (limit {limit:g}s)", file=sys.stderr, flush=True)
        path = out_dir / f"bench-{name}.json"
        try:
            results[name] = run_one(name, table[name], limit, path)
        except Exception as exc:  # noqa: BLE001 - a broken benchmark must not stop the others
            results[name] = {"error": f"run_all: {type(exc).__name__}: {exc}"}
        write_json(path, results[name])  # the final result, or the error beside what was measured
        print(f"== {name}: {'error: ' + str(results[name]['error']) if 'error' in results[name] else 'ok'} "
              f"({results[name].get('wall_seconds', 0):.0f}s)", file=sys.stderr, flush=True)
        write_json(out_dir / "bench-all.json", results)
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")
    sys.stdout.flush()
    if tmp is not None:
        tmp.cleanup()
    failed = [name for name, r in results.items() if "error" in r]
    if failed:  # recorded above, and the others ran; a script running the benchmarks sees it too
        print(f"run_all: {len(failed)} of {len(results)} benchmarks failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
