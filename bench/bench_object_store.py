"""A sample store on an object store against the same store in a local folder: writing its shards, and
reading every generation lazily, first (each shard copied into the local cache) and again (the copies
memory-mapped).

    python bench/bench_object_store.py --shards 32 --shard-size 1024
    python bench/bench_object_store.py --endpoint http://minio:9000 --bucket audits   # a real S3 endpoint

Without ``--endpoint`` the object store is moto's S3 server on localhost (``pip install 'moto[server]'``):
its speed is not S3's, so the figures that carry over are the ratios of the cached read to the local
read (the copies make a second read as fast as a folder's) and of the first read to the cached one
(what one pass over the network costs). Generations are random CIFAR-sized uint8 images. Prints JSON.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402


def _fill(where: str, shards: int, shard_size: int, shape: tuple[int, ...]) -> float:
    """Seconds to create a store at ``where`` and write its ``shards`` shards of random images."""
    from diffaudit.store import SampleStore

    rng = np.random.default_rng(0)
    blocks = [rng.integers(0, 256, (shard_size, *shape), dtype=np.uint8) for _ in range(shards)]
    t0 = time.perf_counter()
    store = SampleStore.create(where, settings={"seed": 0, "source": "bench"}, prompts=[None],
                               per_prompt=shards * shard_size, image_shape=shape, shard_size=shard_size)
    for k, block in enumerate(blocks):
        store.write_shard(k, block)
    return time.perf_counter() - t0


def _read(where: str) -> tuple[float, int]:
    """Seconds to open ``where`` lazily and sum every pixel (each shard read once), and the sum."""
    from diffaudit.store import read_samples

    t0 = time.perf_counter()
    images = read_samples(where, lazy=True).images
    total = sum(int(np.asarray(part).sum(dtype=np.int64)) for part in images.parts())
    return time.perf_counter() - t0, total


def _moto() -> tuple[object, str]:
    import moto.server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto.server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(key, value)
    return server, f"http://{host}:{port}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=32)
    ap.add_argument("--shard-size", type=int, default=1024)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--endpoint", default=None, help="an S3 endpoint to use instead of moto's server on localhost")
    ap.add_argument("--bucket", default="diffaudit-bench", help="bucket (made when missing)")
    args = ap.parse_args()

    server = None
    endpoint = args.endpoint
    if endpoint is None:
        server, endpoint = _moto()
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    if not fs.exists(args.bucket):
        fs.mkdir(args.bucket)
    shape = (args.image_size, args.image_size, 3)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DIFFAUDIT_CACHE"] = str(Path(tmp) / "cache")
        url = f"s3://{args.bucket}/bench-{os.getpid()}-{time.time_ns()}"
        local = str(Path(tmp) / "store")
        write_local = _fill(local, args.shards, args.shard_size, shape)
        write_s3 = _fill(url, args.shards, args.shard_size, shape)
        read_local, sum_local = _read(local)
        read_first, sum_first = _read(url)
        read_cached, sum_cached = _read(url)
        assert sum_local == sum_first == sum_cached, "the object store gave other pixels than the folder"
        fs.rm(url.removeprefix("s3://"), recursive=True)
    if server is not None:
        server.stop()
    megabytes = args.shards * args.shard_size * int(np.prod(shape)) / 2**20
    emit({
        "bench": "object_store", "endpoint": "moto on localhost" if args.endpoint is None else args.endpoint,
        "shards": args.shards, "shard_size": args.shard_size, "image_shape": list(shape), "megabytes": round(megabytes, 1),
        "seconds": {"write_local": write_local, "write_s3": write_s3, "read_local": read_local,
                    "read_s3_first": read_first, "read_s3_cached": read_cached},
        "read_s3_first_mb_per_s": megabytes / read_first, "write_s3_mb_per_s": megabytes / write_s3,
        "cached_over_local": read_cached / read_local, "first_over_cached": read_first / read_cached,
    })


if __name__ == "__main__":
    main()
