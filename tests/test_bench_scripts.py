"""The benchmark scripts (bench/): run_all's robust collection of results, and small runs of the kNN
and filter benchmarks on the CPU (tiny sizes, seconds)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.delenv("DIFFAUDIT_BENCH_RESULT", raising=False)
    import run_all

    return run_all


def test_parse_stdout_takes_the_last_whole_object(bench):
    obj = {"a": 1, "b": {"c": [1, 2]}}
    pretty = json.dumps(obj, indent=2)
    assert bench.parse_stdout(pretty + "\n") == obj
    assert bench.parse_stdout("warming up {stray\n" + pretty + "\n") == obj  # a stray '{' before
    assert bench.parse_stdout("{not json\n" + pretty + "\ndone, bye {\n") == obj  # text after it
    assert bench.parse_stdout('{"old": 1}\n' + pretty) == obj  # the last object wins
    assert bench.parse_stdout("no json here\n") is None
    assert bench.parse_stdout("") is None


def _script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(f"import sys, time\nsys.path.insert(0, {str(BENCH)!r})\nfrom _common import checkpoint, emit\n"
                    + textwrap.dedent(body))
    return str(path)


def test_run_all_records_each_failure_and_keeps_partial_results(bench, tmp_path, monkeypatch):
    table = {
        "good": [_script(tmp_path, "good", 'print("log line {"); emit({"x": 1}); print("trailing text")')],
        "crash": [_script(tmp_path, "crash", 'r = {"stock": 2.0}\ncheckpoint(r, "stock")\nraise RuntimeError("boom")')],
        "slow": [_script(tmp_path, "slow", 'r = {"first": 1}\ncheckpoint(r, "first")\ntime.sleep(60)')],
        "garbage": [_script(tmp_path, "garbage", 'print("{ not json")')],
        "printer": [_script(tmp_path, "printer", 'print("{\\"y\\": 2}")')],  # stdout only, no result file
    }
    monkeypatch.setattr(bench, "CPU", table)
    out = tmp_path / "out"
    assert bench.main(["--table", "cpu", "--only", ",".join(table), "--limits", "slow=3", "--out-dir", str(out)]) == 1
    res = json.loads((out / "bench-all.json").read_text())
    assert list(res) == list(table)
    assert res["good"]["x"] == 1 and "error" not in res["good"]
    assert res["printer"]["y"] == 2 and "error" not in res["printer"]
    crash = res["crash"]
    assert crash["stock"] == 2.0 and crash["partial"] and crash["stage"] == "stock"
    # every result names its benchmark first, under one key: the script's name where it gives none
    assert list(res["good"])[0] == "bench" and (res["good"]["bench"], crash["bench"]) == ("good", "crash")
    assert "boom" in " ".join(crash["error"]) and crash["returncode"] != 0
    slow = res["slow"]
    assert slow["first"] == 1 and slow["partial"] and "timed out after 3s" in slow["error"] and slow["wall_seconds"] < 30
    assert "error" in res["garbage"]
    for name in table:  # one file per benchmark beside the combined one
        assert json.loads((out / f"bench-{name}.json").read_text()) == res[name]


def test_run_all_writes_into_a_relative_out_dir_from_where_it_was_called(bench, tmp_path, monkeypatch):
    """The docstring's own `--out-dir bench-out`: each benchmark runs in bench/, where the relative
    folder does not exist, so every one of them failed after measuring."""
    monkeypatch.setattr(bench, "CPU", {"good": [_script(tmp_path, "good", 'emit({"x": 1})')]})
    monkeypatch.chdir(tmp_path)
    assert bench.main(["--table", "cpu", "--out-dir", "bench-out"]) == 0
    good = json.loads((tmp_path / "bench-out" / "bench-good.json").read_text())
    assert good["x"] == 1 and "error" not in good
    assert json.loads((tmp_path / "bench-out" / "bench-all.json").read_text())["good"] == good


def test_run_all_gpu_knn_skips_faiss(bench):
    argv = bench.GPU["knn"]
    assert "faiss_cpu" in argv[argv.index("--skip") + 1] and "diffaudit_faiss" in argv[argv.index("--skip") + 1]
    with pytest.raises(SystemExit, match="unknown benchmark"):
        bench.main(["--table", "cpu", "--only", "nope"])


def test_make_bench_runs_every_benchmark_script(bench):
    """`make bench` (run_all) is documented to run every benchmark: each bench/bench_*.py is in the CPU table,
    and in the GPU table unless it is a CPU-only study (Ray and the object store: neither is carried there)."""
    scripts = {p.name for p in BENCH.glob("bench_*.py")}
    assert scripts == {argv[0] for argv in bench.CPU.values()}
    assert scripts - {argv[0] for argv in bench.GPU.values()} == {"bench_ray.py", "bench_object_store.py"}


def _run_main(module, argv, capsys) -> dict:
    assert module.main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_bench_knn_odd_width_and_faiss_missing(bench, monkeypatch, capsys):
    """30x30x3 = 2,700 values per row (not a multiple of 8: the int8 operands are padded), and faiss
    missing: its baselines are recorded as skipped with the reason, the rest still runs."""
    import bench_knn

    monkeypatch.setattr(bench_knn, "faiss_missing", lambda: "faiss cannot be imported (test)")
    out = _run_main(bench_knn, ["--queries", "48", "--refs", "150", "--k", "5", "--size", "30", "--synthetic",
                                "--skip", "cdist_topk", "--check-queries", "16", "--query-blocks", "20",
                                "--peak-tflops", "1", "--peak-int8-tops", "1"], capsys)
    assert out["dim"] == 2700 and {"gemm_only", "gemm_resident", "naive_numpy"} <= set(out["seconds"])
    assert out["skipped"]["faiss_cpu"] == out["skipped"]["diffaudit_faiss"] == "faiss cannot be imported (test)"
    assert out["skipped"]["cdist_topk"] == "--skip/--only"
    assert "faiss_cpu" not in out["seconds"] and "diffaudit_faiss" not in out["seconds"]
    assert out["diffaudit_exactness"]["max_abs_distance_error"] == 0.0
    assert out["diffaudit_by_query_block"]["20"]["same_result"]
    # int8 operations are "tops" and never a fraction of the bf16 peak (unlike things); float64's are "tflops"
    rate = out["diffaudit_rate"]
    if out["diffaudit_compute"] == "int8":
        assert set(rate) == {"tops", "fraction_of_int8_peak"}
    else:
        assert set(rate) == {"tflops", "fraction_of_bf16_peak"}


def test_bench_knn_times_the_fused_kernel_per_tile_shape_and_the_search_without_it(bench, capsys):
    """--fused-configs times the fused kernel (Triton's interpreter here) with and without the
    selection and reports the share of queries it would send back to the unfused product; --unfused
    times the search with the fusion off, --resident-queries with the queries already on the device
    (here a torch tensor), each with the same result (on the CPU the fusion is off anyway)."""
    pytest.importorskip("triton")
    import bench_knn

    out = _run_main(bench_knn, ["--queries", "40", "--refs", "300", "--k", "3", "--size", "4", "--synthetic",
                                "--only", "none", "--check-queries", "8", "--query-block", "32", "--unfused",
                                "--resident-queries", "--fused-configs", "16x16x32x2x2x1x1;16x16x32x2x4x1x1"], capsys)
    assert out["unfused"]["same_result"] and out["diffaudit_fused"] == {"used": False, "recomputed_rows": 0}
    assert out["resident_queries"]["same_result"] and out["resident_queries_unfused"]["same_result"]
    two, four = out["fused_configs"]["16x16x32x2x2x1x1"], out["fused_configs"]["16x16x32x2x4x1x1"]
    for entry in (two, four):
        assert set(entry["seconds"]) == {"kernel", "kernel_and_select"} and entry["kernel_tops"] > 0
        assert "compiled" not in entry  # the compiler's report only on CUDA
    assert 0 <= four["incomplete_fraction"] < two["incomplete_fraction"] <= 1  # keeping more per tile vouches for more


def test_bench_knn_times_the_waiting_search_beside_the_pipelined_one(bench, capsys):
    """--waiting times the search with pipeline=False beside the default, also at each --query-blocks
    size and with --resident-queries, each with the same result and the ratio between them;
    --cached-chunks times the resumable search with chunks saved in the background and in turn."""
    import bench_knn

    out = _run_main(bench_knn, ["--queries", "40", "--refs", "300", "--k", "3", "--size", "4", "--synthetic",
                                "--only", "none", "--check-queries", "8", "--waiting", "--resident-queries",
                                "--query-blocks", "16", "--cached-chunks"], capsys)
    assert out["waiting"]["same_result"] and out["waiting"]["pipeline_speedup"] > 0
    assert out["resident_queries_waiting"]["same_result"]
    by_block = out["diffaudit_by_query_block"]["16"]
    assert by_block["same_result"] and by_block["waiting"]["same_result"]
    cached = out["cached_chunks"]  # the resumable search, chunks saved in the background or in turn
    assert cached["same_result"] and cached["chunks"] == 1 and cached["background_seconds"] > 0


def test_bench_knn_times_the_streamed_reference_read_once_beside_once_per_block(bench, capsys):
    """--streamed: the search against a reference given as a callable, read once for all query blocks
    beside once per block, and the resumable search in one call beside one per chunk, with the passes
    each made and the same result."""
    import bench_knn

    out = _run_main(bench_knn, ["--queries", "40", "--refs", "300", "--k", "3", "--size", "4", "--synthetic",
                                "--only", "none", "--check-queries", "8", "--query-block", "16", "--streamed"], capsys)
    streamed = out["streamed"]
    assert streamed["same_result"] and (streamed["passes_grouped"], streamed["passes_per_block"]) == (1, 3)
    chunked = streamed["cached_chunks"]
    assert chunked["same_result"] and chunked["chunks"] == 1 and chunked["passes_runs"] == chunked["passes_per_chunk"] == 1


def test_bench_filter_records_resolved_kinds(bench, capsys):
    import bench_filter

    out = _run_main(bench_filter, ["--prompts", "2", "--generations", "24", "--size", "16", "--also-compute", "float64"],
                    capsys)
    main_kind = out["compute"]["resolved"]
    assert out["compute"]["requested"] == "auto" and main_kind in ("int8", "float64")  # never "auto"
    assert out["host_inputs"]["compute"] == out["one_memorized_prompt"]["compute"] == main_kind
    assert out["also_float64"]["compute"] == "float64" and out["also_float64"]["same_graph"]
    assert out["host_inputs"]["flagged"] == out["expected_flagged"] == 1


def test_bench_sd_counts_the_same_operations_for_every_side(bench, capsys):
    """The SD benchmark's operation count: the UNet ``steps`` times, twice under guidance, the text
    encoder twice and the VAE decoder once per image; each side's TFLOP/s is its images/s times that,
    and its fraction of a given peak is that rate over the peak."""
    import bench_sd

    out = _run_main(bench_sd, ["--tiny", "--size", "32", "--batch", "2", "--steps", "3", "--repeats", "1",
                               "--peak-tflops", "0.5"], capsys)
    f = out["tflop_per_image"]
    assert f["unet_calls"] == 6 and min(f["unet_call"], f["text_encoder_call"], f["vae_decode"]) > 0
    assert f["total"] == pytest.approx(6 * f["unet_call"] + 2 * f["text_encoder_call"] + f["vae_decode"])
    assert set(out["rate"]) == set(out["images_per_s"]) == {"stock_pipeline", "diffaudit_source"}  # the CPU's sides
    for side, r in out["rate"].items():
        assert r["tflops"] == pytest.approx(out["images_per_s"][side] * f["total"])
        assert r["fraction_of_peak"] == pytest.approx(r["tflops"] / 0.5)
    assert out["diffaudit_source_images"]["max_l2_to_stock"] == 0.0  # same code, fp32, same latents
    unguided = _run_main(bench_sd, ["--tiny", "--size", "32", "--batch", "1", "--steps", "3", "--repeats", "1",
                                    "--guidance-scale", "1"], capsys)["tflop_per_image"]
    assert unguided["unet_calls"] == 3 and unguided["unet_call"] == pytest.approx(f["unet_call"])


def test_bench_sd_diagnostics_alternate_and_profile_the_uncompiled_sides(bench, capsys):
    """--interleave N times the stock call and the uncompiled source alternately, N each; --profile
    reports both sides' top operators; --sides keeps only the named diffaudit sides and refuses others."""
    import bench_sd

    base = ["--tiny", "--size", "32", "--batch", "1", "--steps", "2", "--repeats", "1"]
    out = _run_main(bench_sd, [*base, "--interleave", "2", "--profile", "--sides", "diffaudit_source"], capsys)
    seconds = out["interleaved"]["seconds"]
    assert set(seconds) == {"stock_pipeline", "diffaudit_source"} and all(len(v) == 2 and min(v) > 0 for v in seconds.values())
    assert out["interleaved"]["median_ratio"] > 0
    for side in ("stock_pipeline", "diffaudit_source"):
        prof = out["profile"][side]
        assert prof["by"] == "self_cpu_time_total" and prof["wall_ms"] > 0  # the CPU's view
        assert prof["ops"] and all(op["calls"] >= 1 for op in prof["ops"])
        assert any("conv" in op["name"] for op in prof["ops"])  # the UNet's and VAE's convolutions are there
    with pytest.raises(SystemExit):
        bench_sd.main([*base, "--sides", "diffaudit_source_compiled"])  # a CUDA side, not among the CPU's
    assert "not among diffaudit_source here" in capsys.readouterr().err


def test_kernel_families_sort_the_kernels_an_h100_profile_named(bench):
    """The families bench_sd's profiles sum kernel time by, for kernel names taken from an H100's
    profiles of the stock pipeline and of the compiled source: inductor's fused kernels whose names
    mention a convolution stay fused work, cuBLAS's nvjet kernels are matrix products."""
    from _common import kernel_family

    names = {
        "triton_poi_fused_convolution_add_3": "inductor fused (element-wise, norms)",
        "triton_red_fused_native_group_norm_2": "inductor fused (element-wise, norms)",
        "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_bias_TNT": "matrix product",
        "triton_tem_fused_mm_4": "matrix product",
        "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize256x64x32": "convolution",
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x64": "attention",
        "void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16>": "layout conversion",
        "void at::native::elementwise_kernel<128, 4>": "other (element-wise, norms, copies)",
    }
    assert {name: kernel_family(name) for name in names} == names


def test_bench_sd_uncompile_restores_the_modules_and_records_each_sides_warm_up(bench, capsys):
    """uncompile gives back the UNet and vae.decode as they were before torch.compile (so --tuned can
    compile them again with other settings); every side's warm-up (its compilation, if any) is timed."""
    import torch

    import bench_sd
    from diffaudit.models.sd_configs import build_stable_diffusion

    pipe = build_stable_diffusion(tiny=True, size=32)
    unet, decode = pipe.unet, type(pipe.vae).decode
    pipe.unet = torch.compile(pipe.unet, options=bench_sd.TUNED_INDUCTOR, dynamic=False)  # not called: no compile
    pipe.vae.decode = torch.compile(pipe.vae.decode, options=bench_sd.TUNED_INDUCTOR, dynamic=False)
    bench_sd.uncompile(pipe)
    assert pipe.unet is unet and "decode" not in vars(pipe.vae) and pipe.vae.decode.__func__ is decode
    bench_sd.uncompile(pipe)  # nothing compiled: unchanged
    assert pipe.unet is unet
    out = _run_main(bench_sd, ["--tiny", "--size", "32", "--batch", "1", "--steps", "2", "--repeats", "1"], capsys)
    assert set(out["warmup_seconds"]) == {"diffaudit_source"} and out["warmup_seconds"]["diffaudit_source"] > 0


def test_bench_batch_fit_off_cuda_compares_the_default_with_itself(bench, capsys):
    """Off CUDA ``auto`` is the default batch (nothing is probed): both sides run it on the same images,
    and each model reports its batches, images and ratio."""
    import bench_batch_fit

    out = _run_main(bench_batch_fit, ["--steps", "2", "--n", "40", "--tiny-sd", "--sd-size", "32", "--sd-steps", "2",
                                      "--sd-n", "3"], capsys)
    for model, default, n in (("pixel", 32, 40), ("stable_diffusion", 8, 3)):
        res = out[model]
        assert res["default"] == res["auto"]["batch"] == default and res["auto"]["probed"] is False
        assert res["images"] == n and min(res["images_per_s"].values()) > 0
        assert res["speedup_of_auto"] == pytest.approx(res["images_per_s"]["auto"] / res["images_per_s"]["default"])
        assert "same configuration" in res["note"]  # a ratio of one configuration with itself is said to be noise


def test_bench_batch_fit_reports_the_probe_it_ran(bench, monkeypatch):
    """On CUDA the chosen batch is the probe's: ``choose`` reports the batch and each size's peak as
    :func:`largest_batch_that_fits` measured them (here against a simulated allocator)."""
    import bench_batch_fit
    import torch

    class Memory:  # 100 bytes per image on a 1,000-byte device: 800 fit within 80%
        peak_bytes = 0

        def __init__(self, device):
            pass

        def total(self):
            return 1000

        def reset(self):
            self.peak_bytes = 0

        def peak(self):
            return self.peak_bytes

    memory = Memory(None)
    monkeypatch.setattr(bench_batch_fit, "CudaMemory", lambda device: memory)
    probe = lambda batch: setattr(memory, "peak_bytes", 100 * batch)  # noqa: E731
    got = bench_batch_fit.choose(probe, torch.device("cuda"), default=2, start=1, cap=64)
    assert got["batch"] == 8 and got["probed"] and got["tried"][:4] == [(1, 100), (2, 200), (4, 400), (8, 800)]
    assert got["limit_bytes"] == 800 and got["probe_seconds"] >= 0


def test_bench_object_store_reads_the_same_pixels_and_reports_its_ratios():
    """In its own process: it sets the AWS variables of the moto server it starts."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(BENCH / "bench_object_store.py"), "--shards", "2", "--shard-size", "16",
                           "--image-size", "8"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["megabytes"] == pytest.approx(2 * 16 * 8 * 8 * 3 / 2**20, abs=0.05)
    assert out["cached_over_local"] == pytest.approx(out["seconds"]["read_s3_cached"] / out["seconds"]["read_local"])
    assert out["first_over_cached"] > 0


def test_every_benchmark_explains_itself_in_help(bench, capsys):
    """`run_all.py --help` said only "Run every benchmark", and four scripts' --help had no description:
    run_all lists each benchmark with what it measures, and every script prints its docstring."""
    import subprocess
    import sys

    with pytest.raises(SystemExit):
        bench.main(["--help"])
    text = capsys.readouterr().out
    for name in {*bench.GPU, *bench.CPU}:
        assert f"\n  {name}: " in text
    assert "ray_verify: bench_ray.py --job verify [cpu]" in text and "Sampling throughput" in text
    for script in sorted(bench.HERE.glob("bench_*.py")):
        out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=bench.HERE)
        assert out.returncode == 0, script
        description = out.stdout.split("\n\n")[1]  # after the usage lines: the docstring's first paragraph
        assert len(description.split()) >= 8, script


def test_bench_filter_keeps_the_fastest_of_its_repeats(bench, capsys, monkeypatch):
    """A single timing on a loaded machine inverted the filter's int8-against-float64 comparison:
    --repeats N keeps each side's fastest."""
    import bench_filter

    times = iter([5.0, 2.0, 3.0])
    assert bench_filter._best_of(3, lambda: (next(times), "result")) == (2.0, "result")
    out = _run_main(bench_filter, ["--prompts", "2", "--generations", "24", "--size", "16", "--repeats", "2"], capsys)
    assert out["repeats"] == 2 and out["host_inputs"]["flagged"] == out["expected_flagged"]
