#!/usr/bin/env bash
# Gather, on a machine with PyPI and the weights cache (guide-engine models fetch), what bench/gpu.sh needs
# on a CUDA host that reaches no registry, into $GPU_DIR (default .gpu/, git-ignored), to travel with the
# checkout; then, there: bash bench/gpu.sh setup tests run ... ("setup" installs what this gathered).
#   $GPU_DIR/home/models/   the cache's verified model files, without the dlib port's safetensors (the host
#                           rebuilds it from dlib's .dat on first load) and without the two attackers' networks:
#                           47 MB
#   $GPU_DIR-nets/home/models/  arcface-mbf and edgeface-s (28.5 MB): with the rest they pass the 64 MiB a run
#                           call carries, so they travel in a second call to the same warm machine (the first
#                           call's carry stays there): run(carry=[".gpu"], ...) then run(carry=[".gpu-nets"], ...)
#   $GPU_DIR/wheels/        for CPython $PYVER (default 3.12) on x86-64 Linux: the serve extra and tritonclient,
#                           with those of their dependencies in $CARRY (what a CUDA image with PyTorch, JAX and
#                           the scientific stack lacked when this was written; the rest resolve to the image's)
set -euo pipefail
GPU_DIR=${GPU_DIR:-.gpu}
PYVER=${PYVER:-3.12}
CARRY=${CARRY:-"fastapi starlette pydantic pydantic-core annotated-types typing-inspection uvicorn tritonclient
  python-rapidjson geventhttpclient gevent greenlet zope-event zope-interface brotli opentelemetry-api
  pytest-xdist execnet"}
NETS=${NETS:-"arcface-mbf edgeface-s"}  # carried apart, in $GPU_DIR-nets
HOME_DIR=${GUIDE_ENGINE_HOME:-$HOME/.cache/guide-engine}

rm -rf "$GPU_DIR" "$GPU_DIR-nets" && mkdir -p "$GPU_DIR/home/models" "$GPU_DIR/wheels" "$GPU_DIR-nets/home/models"
for model in "$HOME_DIR"/models/*/; do
  dest=$GPU_DIR
  for net in $NETS; do [ "$(basename "$model")" = "$net" ] && dest=$GPU_DIR-nets; done
  mkdir -p "$dest/home/models/$(basename "$model")"
  find "$model" -maxdepth 1 -type f ! -name '*.safetensors' ! -name '*.tmp' \
    -exec cp {} "$dest/home/models/$(basename "$model")/" \;
done

resolved=$(mktemp -d)
trap 'rm -rf "$resolved"' EXIT
platforms=()
for p in manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 \
         manylinux1; do
  platforms+=(--platform "${p}_x86_64")
done
python3 -m pip download -q --disable-pip-version-check --only-binary=:all: --python-version "$PYVER" \
  --implementation cp "${platforms[@]}" -d "$resolved" "fastapi>=0.110" "uvicorn>=0.29" "tritonclient[http,grpc]>=2.40" \
  "pytest-xdist>=3"
for whl in "$resolved"/*.whl; do  # a wheel's name: distribution-version-..., the distribution with _ for - and .
  name=$(basename "$whl" | cut -d- -f1 | tr '_.' '--' | tr '[:upper:]' '[:lower:]')
  for want in $CARRY; do
    [ "$name" = "$want" ] && cp "$whl" "$GPU_DIR/wheels/"
  done
done
echo "$GPU_DIR: $(du -sh "$GPU_DIR/home" | cut -f1) of model files, $(ls "$GPU_DIR/wheels" | wc -l) wheels" \
     "($(du -sh "$GPU_DIR/wheels" | cut -f1)); carry it: $(du -sh "$GPU_DIR" | cut -f1) in all;" \
     "$GPU_DIR-nets: $(du -sh "$GPU_DIR-nets" | cut -f1), in a second call"
