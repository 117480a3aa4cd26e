"""`train` and `sample` on the real CIFAR-10 shards (tiny CPU config: a 32-image subset at 8x8, RGB)."""

import json

import numpy as np

from diffaudit.cli.main import main
from diffaudit.store import read_samples


def test_train_and_sample_on_cifar10(tmp_path, cifar10_root):
    run, samples = tmp_path / "run", tmp_path / "samples"
    data = ["--data", "cifar10", "--cifar-root", str(cifar10_root), "--subset", "32", "--image-size", "8"]
    assert main(["train", *data, "--preset", "tiny", "--steps", "6", "--batch-size", "8", "--checkpoint-every", "3",
                 "--warmup-steps", "1", "--out", str(run), "--device", "cpu", "--quiet"]) == 0
    ids = json.loads((run / "train_ids.json").read_text())
    assert len(ids["keys"]) == 32 and all("_" in k for k in ids["keys"])  # WebDataset keys like cat_0631
    assert json.loads((run / "unet" / "config.json").read_text())["in_channels"] == 3
    assert main(["sample", "--model", str(run), "--n", "8", "--steps", "3", "--out", str(samples), "--device", "cpu",
                 "--quiet"]) == 0
    gen = read_samples(str(samples))
    assert gen.images.shape == (8, 8, 8, 3) and gen.images.dtype == np.uint8
