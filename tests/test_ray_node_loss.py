"""A Ray node lost mid-run (slow: starts a local Ray cluster of three nodes).

The other Ray tests kill a worker process; here a whole node goes (its raylet, object store and
workers), as when a machine of a cluster fails: the shard its worker was writing is made by the node
left, and the store equals one process's.
"""

import threading
import time

import pytest

from diffaudit.cli.main import main
from diffaudit.store import SampleStore
from helpers import assert_same_shards, make_tiny_model_dir

ray = pytest.importorskip("ray", reason="Ray is optional: pip install 'diffaudit[ray]'")
pytestmark = pytest.mark.slow


def test_a_node_lost_mid_shard_leaves_its_shard_to_the_node_left(tmp_path):
    from ray.cluster_utils import Cluster

    model = make_tiny_model_dir(tmp_path / "model")
    common = ["--model", str(model), "--n", "48", "--steps", "3", "--shard-size", "8", "--micro-batch", "8",
              "--device", "cpu", "--quiet"]
    single, dist, held = tmp_path / "single", tmp_path / "ray", tmp_path / "held"
    assert main(["sample", *common, "--out", str(single)]) == 0

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the driver's node runs no worker
    try:
        cluster.add_node(num_cpus=1)
        # this node's worker stops between its first shard's pixels and sidecar, until the node is removed
        doomed = cluster.add_node(num_cpus=1, env_vars={"DIFFAUDIT_HOLD_AT": "store.between_files",
                                                        "DIFFAUDIT_HOLD_MARKER": str(held)})
        cluster.wait_for_nodes()
        cluster.connect()
        removed = []

        def remove_when_held():
            deadline = time.monotonic() + 120
            while not held.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if held.exists():
                cluster.remove_node(doomed)
                removed.append(time.monotonic())

        remover = threading.Thread(target=remove_when_held, daemon=True)
        remover.start()
        assert main(["sample", *common, "--out", str(dist), "--ray", cluster.address]) == 0
        remover.join(timeout=150)
        assert removed, "the node's worker never reached the shard's sidecar: the test did not lose a node mid-shard"
        assert sum(not n["Alive"] for n in ray.nodes()) == 1
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert_same_shards(SampleStore.open(single), SampleStore.open(dist), 6)
