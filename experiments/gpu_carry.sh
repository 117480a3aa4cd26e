#!/usr/bin/env bash
# Fills the two folders the GPU scripts expect to be carried to the device machine (run here, in the
# repository root, with the package registry reachable):
#   .whl/  wheels the GPU image lacks, for its Python 3.12: diffusers (and importlib_metadata, which it
#          needs and the image lacks), opacus, webdataset (and braceexpand), faiss-cpu (bench_knn's
#          faiss baselines). Together about 25 MB; the image has everything else they need.
#   .gpu/  the CIFAR-10 training shard 0 (about 25 MB) that gpu_extraction.sh, gpu_mia.sh and the
#          CUDA extraction tests read; from $CIFAR10 (default ../shared/data/cifar10).
# Both are added to .git/info/exclude, so that they travel only when named: carry [".whl", ".gpu"]
# (about 55 MB with the working tree, under the device's 64 MiB).
# Versions: those this checkout's .venv holds where it has them (what the tests ran with), else the newest.
set -euo pipefail
CIFAR10=${CIFAR10:-../shared/data/cifar10}
mkdir -p .git/info .whl .gpu
for d in /.whl/ /.gpu/; do grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >>.git/info/exclude; done
version() {  # NAME -> NAME==VERSION of the .venv's copy, else NAME
  local v
  v=$(.venv/bin/python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null) \
    && echo "$1==$v" || echo "$1"
}
for name in diffusers importlib_metadata opacus webdataset braceexpand faiss-cpu; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "$(version "$name")"
done
cp "$CIFAR10/cifar10-train-000000.tar" .gpu/
du -sh .whl .gpu
