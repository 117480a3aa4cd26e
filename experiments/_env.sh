# Sourced by the GPU experiment scripts: installs carried wheels (.whl/, for machines without
# diffusers) into /tmp/site and puts the checkout's src/ on the path.
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1
da() { python3 -m diffaudit.cli.main "$@"; }
