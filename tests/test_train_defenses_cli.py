"""`diffaudit train --dedup KEEP` and `--dp-noise`: the defences reached from the train command."""

import json

from diffaudit.cli.main import main

BASE = ["train", "--data", "digits", "--subset", "24", "--preset", "tiny", "--batch-size", "8", "--steps", "4",
        "--checkpoint-every", "2", "--warmup-steps", "1", "--quiet", "--device", "cpu"]


def test_dedup_keep_list_restricts_the_training_set(tmp_path):
    from diffaudit.data import load_dataset

    ds = load_dataset("digits", subset=24)
    keep = tmp_path / "keep.json"
    keep.write_text(json.dumps({"keys": ds.keys[:20]}))  # the `keys` of `diffaudit dedup`'s keep.json
    assert main(BASE + ["--dedup", str(keep), "--out", str(tmp_path / "run")]) == 0
    ids = json.loads((tmp_path / "run" / "train_ids.json").read_text())
    assert sorted(ids["keys"]) == sorted(ds.keys[:20])
    cfg = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert cfg["data"]["n_dropped_duplicates"] == 4


def test_dp_sgd_run_reports_epsilon(tmp_path):
    assert main(BASE + ["--dp-noise", "1.0", "--out", str(tmp_path / "dp")]) == 0
    dp = json.loads((tmp_path / "dp" / "dp.json").read_text())
    assert dp["epsilon"] is not None and 0 < dp["epsilon"] < float("inf")
    assert (tmp_path / "dp" / "unet" / "diffusion_pytorch_model.safetensors").exists()
