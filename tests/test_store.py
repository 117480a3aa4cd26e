"""Sample store: sharded atomic writes, resume after SIGKILL, batch-size independence, reading back."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from diffaudit.cli.main import main
from diffaudit.core.errors import DiffauditError
from diffaudit.core.seeds import generation_seed
from diffaudit.store import SampleStore, read_samples
from helpers import make_tiny_model_dir


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("model"))


def sample_args(model, out, *extra):
    return ["sample", "--model", str(model), "--out", str(out), "--n", "40", "--steps", "3",
            "--shard-size", "16", "--micro-batch", "8", "--quiet", "--device", "cpu", *extra]


def test_store_layout_ids_and_seeds(tiny_model, tmp_path):
    out = tmp_path / "s"
    assert main(sample_args(tiny_model, out)) == 0
    store = SampleStore.open(out)
    assert store.n_shards == 3 and store.pending() == []
    images, meta = store.read_shard(2)
    assert images.shape == (8, 8, 8, 1) and images.dtype == np.uint8
    assert meta["ids"][0] == "p0-i32" and meta["seeds"][0] == generation_seed(0, 0, 32)
    ds = read_samples(str(out))
    assert len(ds) == 40 and ds.keys[5] == "p0-i5" and ds.captions is None
    assert json.loads((out / "result.json").read_text())["n_samples"] == 40
    # Finished shards are never rewritten.
    with pytest.raises(DiffauditError):
        store.write_shard(0, images[:8].repeat(2, axis=0))


def test_batch_size_does_not_change_pixels(tiny_model, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(sample_args(tiny_model, a, "--batch-size", "5")) == 0
    assert main(sample_args(tiny_model, b, "--batch-size", "16")) == 0
    assert np.array_equal(read_samples(str(a)).images, read_samples(str(b)).images)


def test_killed_sampling_resumes_to_the_same_store(tiny_model, tmp_path, capsys):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert main(sample_args(tiny_model, ref)) == 0
    env = {**os.environ, "DIFFAUDIT_KILL_AT": "sample.shard:2"}
    proc = subprocess.run([sys.executable, "-m", "diffaudit.cli.main", *sample_args(tiny_model, killed)], env=env)
    assert proc.returncode == -9
    partial = SampleStore.open(killed)
    assert partial.completed() == [0, 1] and partial.pending() == [2]
    with pytest.raises(DiffauditError, match="unfinished"):
        partial.to_dataset()
    mtime = os.path.getmtime(killed / "shards" / "shard-000000.npy")
    capsys.readouterr()
    assert main([a for a in sample_args(tiny_model, killed) if a != "--quiet"]) == 0
    assert f"sample: resuming {killed}: 2 of 3 shards finished earlier, kept" in capsys.readouterr().err
    assert os.path.getmtime(killed / "shards" / "shard-000000.npy") == mtime
    for k in range(3):
        assert np.array_equal(SampleStore.open(ref).read_shard(k)[0], SampleStore.open(killed).read_shard(k)[0])
    assert not list((killed / "shards").glob(".*tmp"))


def test_changed_settings_are_refused(tiny_model, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(sample_args(tiny_model, out)) == 0
    assert main(sample_args(tiny_model, out)[:-2] + ["--device", "cpu", "--steps", "5"]) == 2
    assert "steps" in capsys.readouterr().err


def test_store_refuses_to_resume_with_other_weights_in_the_same_folder(tiny_model, tmp_path, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    out = tmp_path / "s"
    assert main(sample_args(model, out)) == 0
    (out / "shards" / "shard-000001.npy").unlink()  # as if killed before the second shard
    weights = next(model.rglob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # other weights under the same path
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(sample_args(model, out)) == 2
    assert "the contents of --model (was " in capsys.readouterr().err


def test_export_png(tiny_model, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["--json", *sample_args(tiny_model, out)]) == 0
    printed = json.loads(capsys.readouterr().out)  # the store's result, as other commands print theirs
    assert printed["store"] == str(out) and printed["n_samples"] == 40 and printed["command"] == "sample"
    assert printed["settings"] == json.loads((out / "result.json").read_text())["settings"]
    assert main(["export", "--samples", str(out), "--out", str(tmp_path / "png"), "--quiet"]) == 0
    files = sorted(f for f in os.listdir(tmp_path / "png") if f.endswith(".png"))
    assert len(files) == 40 and "p0-i0.png" in files
    assert "prompts" not in json.loads((tmp_path / "png" / "result.json").read_text())  # unconditional: none to name


def test_export_resumes_and_never_mixes_two_stores_or_exports_an_unfinished_one(tiny_model, tmp_path, capsys):
    from diffaudit.core.io import read_json

    out, other, png = tmp_path / "s", tmp_path / "s2", tmp_path / "png"
    assert main(sample_args(tiny_model, out)) == 0
    assert main(sample_args(tiny_model, other) + ["--seed", "5"]) == 0
    assert main(["export", "--samples", str(out), "--out", str(png), "--quiet"]) == 0
    record = json.loads((png / "settings.json").read_text())
    record["settings"]["partial"] = False  # as the previous version recorded it: still resumes
    (png / "settings.json").write_text(json.dumps(record))
    (png / "p0-i3.png").unlink()
    (png / "result.json").unlink()  # as if stopped before its end: resumed, only the missing file written
    assert main(["export", "--samples", str(out), "--out", str(png), "--quiet"]) == 0
    r = read_json(png / "result.json")
    assert (r["exported"], r["written_now"]) == (40, 1)
    (png / "p0-i7.png").unlink()  # deleted after the export finished: a re-run puts it back
    assert main(["--json", "export", "--samples", str(out), "--out", str(png), "--quiet"]) == 0
    assert (json.loads(capsys.readouterr().out)["written_now"], (png / "p0-i7.png").is_file()) == (1, True)
    assert main(["--json", "export", "--samples", str(out), "--out", str(png), "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["written_now"] == 0  # this run's count, not the stored one
    scans = tmp_path / "scans"  # a folder of the user's real images: generated ones are never mixed in
    scans.mkdir()
    (scans / "patient-1.png").write_bytes(b"\x89PNG")
    assert main(["export", "--samples", str(out), "--out", str(scans), "--quiet"]) == 2
    assert "already holds 1 file of yours (e.g. patient-1.png)" in capsys.readouterr().err
    assert sorted(p.name for p in scans.iterdir()) == ["patient-1.png"]
    assert main(["export", "--samples", str(other), "--out", str(png), "--quiet"]) == 2  # another store
    assert "other settings: --samples (the store's generations) (was 'store:" in capsys.readouterr().err
    assert main(["export", "--samples", str(tmp_path / "nope"), "--out", str(tmp_path / "png3"), "--quiet"]) == 2
    assert f"{tmp_path / 'nope'} does not exist (expected a sample store" in capsys.readouterr().err
    (other / "shards" / "shard-000001.json").unlink()  # an unfinished store
    assert main(["export", "--samples", str(other), "--out", str(tmp_path / "png2"), "--quiet"]) == 2
    assert "1 of 3 shards are not finished" in capsys.readouterr().err and not (tmp_path / "png2").exists()
    assert main(["export", "--samples", str(other), "--out", str(tmp_path / "png2"), "--partial"]) == 0
    assert read_json(tmp_path / "png2" / "result.json")["unfinished_shards"] == 1
    assert "; a partial export: 1 shard of the store is not finished (re-run once" in capsys.readouterr().out
    # sampling finished later: the same export (no --partial needed now) catches up, writing only the rest
    assert main(sample_args(tiny_model, other) + ["--seed", "5"]) == 0
    assert main(["export", "--samples", str(other), "--out", str(tmp_path / "png2"), "--quiet"]) == 0
    r = read_json(tmp_path / "png2" / "result.json")
    assert (r["exported"], r["written_now"], r["unfinished_shards"]) == (40, 16, 0)


def test_export_refuses_an_id_that_would_leave_the_folder(tiny_model, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(sample_args(tiny_model, out)) == 0
    sidecar = out / "shards" / "shard-000001.json"
    meta = json.loads(sidecar.read_text())
    meta["ids"][0] = "../../escaped"
    sidecar.write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["export", "--samples", str(out), "--out", str(tmp_path / "png" / "x"), "--quiet"]) == 2
    assert "not a generation id" in capsys.readouterr().err
    assert not list(tmp_path.rglob("escaped*"))


def test_empty_prompt_file_is_an_error(tiny_model, tmp_path, capsys):
    pf = tmp_path / "prompts.txt"
    pf.write_text("\n\n")
    assert main(["sample", "--model", str(tiny_model), "--out", str(tmp_path / "s"), "--prompts", str(pf), "--quiet"]) == 2
    assert "empty" in capsys.readouterr().err


def test_shards_past_a_million_are_counted_finished(tmp_path):
    from diffaudit.store.sample_store import SampleStore

    store = SampleStore.create(tmp_path / "s", settings={"seed": 0}, prompts=[None], per_prompt=1_000_002,
                               image_shape=(1, 1, 1), shard_size=1)
    for k in (3, 999_999, 1_000_000, 1_000_001):
        store.write_shard(k, np.zeros((1, 1, 1, 1), np.uint8))
    assert (tmp_path / "s" / "shards" / "shard-1000000.json").exists()  # 7 digits from here on
    assert store.completed() == [3, 999_999, 1_000_000, 1_000_001]
    assert 1_000_000 not in store.pending() and len(store.pending()) == 1_000_002 - 4


def test_a_ray_worker_samples_as_the_store_records(tiny_model, tmp_path):
    """The worker class the Ray path runs (called here without Ray): it takes the device type and
    micro-batch the store records, not its own defaults, and refuses a store whose recorded sampler
    differs from its own."""
    import shutil

    from diffaudit.store.ray_fill import _ShardWorker

    ref, out = tmp_path / "ref", tmp_path / "s"
    assert main(sample_args(tiny_model, ref)) == 0
    shutil.copytree(ref, out)
    store = SampleStore.open(out)
    for k in range(store.n_shards):  # drop the shards: the worker must redo them
        (out / "shards" / f"shard-{k:06d}.json").unlink()
    options = {"steps": 3, "eta": 0.0, "micro_batch": None, "guidance_scale": None, "scheduler": None,
               "fast": False, "compile": False, "batch_size": 16}
    worker = _ShardWorker(str(out), str(tiny_model), options, 1)
    assert worker.source.settings()["micro_batch"] == 8  # recorded; its own default would be 32
    for k in range(store.n_shards):
        worker.fill(k)
    assert np.array_equal(read_samples(str(out)).images, read_samples(str(ref)).images)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["sampler"]["eta"] = 0.5
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DiffauditError, match=r"differ from those .* records \(eta\)"):
        _ShardWorker(str(out), str(tiny_model), options, 1)


def test_a_train_ids_json_written_beside_the_weights_does_not_stop_the_store_resuming(tmp_path, capsys):
    """A model trained elsewhere is given its train_ids.json for `mia` once it has generated (README's text-to-image
    workflow): what it generates depends on its weights alone, so the store resumes; a store recorded by an earlier
    version, whose digest took the file in, resumes too (read through sample's upgrade)."""
    import torch

    from diffaudit.models.digest import model_digest
    from diffaudit.models.unets import build_unet, unet_config

    model, out = tmp_path / "unet-elsewhere", tmp_path / "s"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        build_unet(unet_config("tiny", image_size=8, in_channels=1)).save_pretrained(model)  # a bare UNet folder
    assert main(sample_args(model, out)) == 0
    (out / "shards" / "shard-000001.npy").unlink()  # as if killed before the second shard
    (model / "train_ids.json").write_text(json.dumps({"keys": ["npz:0", "npz:1"]}))
    assert model_digest(model) != model_digest(model, members=False)  # membership attacks do read it
    assert main(sample_args(model, out)) == 0
    assert SampleStore.open(out).completed() == [0, 1, 2]
    record = json.loads((out / "settings.json").read_text())
    record["settings"]["model_digest"] = model_digest(model)  # as the earlier version recorded it, the file in
    (out / "settings.json").write_text(json.dumps(record))
    (out / "shards" / "shard-000002.npy").unlink()
    capsys.readouterr()
    assert main(sample_args(model, out)) == 0, capsys.readouterr().err
    assert SampleStore.open(out).completed() == [0, 1, 2]


def test_an_unfinished_store_another_process_is_writing_says_to_wait(tiny_model, tmp_path):
    """`verify` (or extract) on a store `sample` is still filling: the error names that process and says to wait,
    rather than to re-run `diffaudit sample` (which that process's lock would refuse)."""
    out = tmp_path / "s"
    assert main(sample_args(tiny_model, out)) == 0
    (out / "shards" / "shard-000001.npy").unlink()
    with pytest.raises(DiffauditError, match="re-run `diffaudit sample` to finish"):
        SampleStore.open(out).to_dataset()
    child = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom diffaudit.core.folder_lock import hold\n"
                              "hold(sys.argv[1]); print('held', flush=True); time.sleep(60)", str(out)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(DiffauditError, match=rf"1 of 3 shards are unfinished: `diffaudit sample` \(pid {child.pid}\) "
                                                 "is still writing it; wait for it to finish"):
            SampleStore.open(out).to_dataset()
    finally:
        child.kill()
        child.wait()
