"""A Ray worker refuses a store recorded for other weights (store.ray_fill._ShardWorker, without Ray)."""

from __future__ import annotations

import shutil

import pytest
from safetensors.torch import load_file, save_file

from diffaudit.cli.main import main
from diffaudit.core.errors import DiffauditError
from diffaudit.store.ray_fill import _ShardWorker
from helpers import make_tiny_model_dir

OPTIONS = {"steps": 2, "eta": 0.0, "micro_batch": None, "guidance_scale": None, "scheduler": None,
           "fast": False, "compile": False, "batch_size": 8}


def test_a_worker_whose_model_folder_holds_other_weights_refuses_the_store(tmp_path):
    model, other, out = make_tiny_model_dir(tmp_path / "a"), tmp_path / "b", tmp_path / "s"
    shutil.copytree(model, other)
    (weights,) = (other / "unet").glob("*.safetensors")
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1.0  # same architecture and config, other weights
    save_file(tensors, weights)
    assert main(["sample", "--model", str(model), "--out", str(out), "--n", "8", "--steps", "2",
                 "--shard-size", "8", "--quiet", "--device", "cpu"]) == 0
    _ShardWorker(str(out), str(model), OPTIONS, 1)  # the recorded weights: accepted
    with pytest.raises(DiffauditError, match="the contents of --model: the worker's --model folder holds other weights"):
        _ShardWorker(str(out), str(other), OPTIONS, 1)


def test_a_worker_on_a_node_without_the_store_says_out_must_be_shared(tmp_path):
    """Each node reads --out's path on its own disk: a worker that does not find the store there says
    --out must be shared (or an object store), not that the folder "is not a sample store"."""
    model = make_tiny_model_dir(tmp_path / "m")
    with pytest.raises(DiffauditError, match="does not exist on this node; --out must lie on a filesystem every node"):
        _ShardWorker(str(tmp_path / "on-another-disk"), str(model), OPTIONS, 1)
