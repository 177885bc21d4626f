#!/usr/bin/env bash
# The GPU checklist on a CUDA host, in stages, each one's log and JSON under $RESULTS (default results/gpu):
#   bash bench/gpu.sh setup     on a host that reaches no registry: install what bench/gpu-prepare.sh gathered
#                               in $GPU_DIR (default .gpu/) and this checkout into /tmp/site (on PYTHONPATH,
#                               pip --no-deps), and use a copy of $GPU_DIR/home as the weights cache; the
#                               stages named after it in the same call run with all three
#   bash bench/gpu.sh tests     the tests marked gpu (kernels compiled for this GPU, unlearn/verify/runner
#                               on CUDA)
#   bash bench/gpu.sh suite     the whole suite, 8 workers (pytest-xdist, carried), GUIDE_ENGINE_DEVICE=cuda:
#                               the CLI commands run on CUDA; the kernel tests interpret on CPU tensors
#   bash bench/gpu.sh run       unlearn --seed 0 --device cuda with defaults, verify --device cuda on it;
#                               the same unlearn with --cuda-graph
#   bash bench/gpu.sh kernels   Triton vs eager and torch.compile'd references; one unlearning iteration
#                               with GUIDE_ENGINE_KERNELS=torch vs the kernels, each eager and as a CUDA graph
#   bash bench/gpu.sh sampling  guide-engine bench: images/s per backend at batch 1, 64, 256
#   bash bench/gpu.sh robust    the robust table: GUIDE, --robust's defaults, the best measured search
#                               rounds, those with the look hinge, and the defaults trained with
#                               ArcFace-MBF and with the dlib + ArcFace ensemble (docs/robust.md) on seeds
#                               $SEEDS (default 0-9), verify's exam (every attacker, 32 x 300), $JOBS runs
#                               at a time (default 12); then the harder exam (16 x 500) on the last two
#   bash bench/gpu.sh eg3d      EG3D FFHQ-512 (random init) s/iter and peak memory; needs NVLABS_CODE=the
#                               eg3d/ folder of a checkout of github.com/NVlabs/eg3d
# Stages can be combined: bash bench/gpu.sh run kernels. The weights must be in the cache already
# (guide-engine models fetch); nothing is downloaded.
set -uo pipefail
RESULTS=${RESULTS:-results/gpu}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
stage() { echo; echo "=== $1 ($(date +%H:%M:%S))"; }
# verify's attackers: all of them where the ArcFace and EdgeFace files are in the cache (a second carry), else the
# two that need only dlib; ATTACKERS=... overrides
attackers() {
  if [ -n "${ATTACKERS:-}" ]; then echo "$ATTACKERS"
  elif [ -d "${GUIDE_ENGINE_HOME:-$HOME/.cache/guide-engine}/models/edgeface-s" ]; then echo all
  else echo dlib-resnet-v1,pixel; fi
}
# the robust mode defending with the networks the proof attacks with (docs/robust.md), where they are here:
# ArcFace-MBF alone (the strongest attacker's network), the dlib + ArcFace ensemble, and ArcFace-MBF with search
# rounds (fresh attacks through G_u every 50 iterations, their finds hinged: the coverage the pool lacks)
defences() {
  [ "$(attackers)" = all ] && echo "--variant arc:identity=arcface-mbf --variant ens:identity=dlib-resnet-v1+arcface-mbf" \
    "--variant arcs:identity=arcface-mbf,search_every=50,search_starts=16,search_steps=150,replay=8,bank_size=64"
}

for what in "$@"; do
  case $what in
    setup)
      GPU_DIR=${GPU_DIR:-.gpu}
      stage "setup from $GPU_DIR: $(ls "$GPU_DIR"/wheels | wc -l) wheels, this checkout, the weights cache"
      $PY -m pip install -q --disable-pip-version-check --no-index --no-deps --no-build-isolation --no-compile \
        --no-cache-dir --upgrade --target /tmp/site "$GPU_DIR"/wheels/*.whl . || exit 1
      export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
      export PATH=/tmp/site/bin:$PATH  # where pip put `guide-engine`
      export GUIDE_ENGINE_HOME=/tmp/guide-engine-home  # a copy: $GPU_DIR stays the size it travelled at
      rm -rf "$GUIDE_ENGINE_HOME" && cp -r "$GPU_DIR/home" "$GUIDE_ENGINE_HOME"
      if [ -d "$GPU_DIR-nets/home/models" ]; then  # the attackers' networks, carried by a second call
        cp -r "$GPU_DIR-nets/home/models/." "$GUIDE_ENGINE_HOME/models/"
      else
        echo "note: no $GPU_DIR-nets: verify's ArcFace and EdgeFace attackers cannot run; carry it next"
      fi
      guide-engine models fetch $(ls "$GUIDE_ENGINE_HOME/models") || exit 1  # verifies what is here
      $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'on',
              torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
      ;;
    tests)
      stage "tests marked gpu (Triton compiled, not interpreted)"
      TRITON_INTERPRET=0 $PY -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$RESULTS/tests-gpu.log" | tail -15
      ;;
    suite)
      stage "the whole suite (kernels interpreted on CPU tensors, the CLI's commands on CUDA)"
      $PY -c "import xdist" 2> /dev/null || { echo "pytest-xdist is missing: run setup with .gpu/ first"; exit 1; }
      # tests/conftest.py sets GUIDE_ENGINE_DEVICE=cpu only where it is unset: here the commands default to CUDA
      GUIDE_ENGINE_DEVICE=cuda TRITON_INTERPRET=1 timeout ${SUITE_TIMEOUT:-480} $PY -m pytest -q -n 8 \
        -p no:cacheprovider tests 2>&1 \
        | tee "$RESULTS/tests-all.log" | tail -25
      ;;
    run)
      for graph in "" --cuda-graph; do
        stage "unlearn --seed 0 --device cuda $graph (defaults)"
        rm -rf "$RESULTS/run0$graph" "$RESULTS/run0$graph.partial"
        guide-engine unlearn --seed 0 --device cuda $graph --out "$RESULTS/run0$graph" --quiet 2>&1 | tail -5
        $PY - "$RESULTS/run0$graph" <<'EOF'
import json, sys
from pathlib import Path
from guide_engine.bench.eg3d import s_per_iter
run = Path(sys.argv[1])
m = json.loads((run / "manifest.json").read_text())
print(f"median s/iter after 10 burn-in {s_per_iter(run, 10)[0]:.4f}, "
      f"whole loop {m['timings_s']['unlearn']:.1f} s, peak CUDA memory {m['peak_cuda_memory_mib']} MiB")
EOF
      done
      stage "verify --device cuda"
      t0=$SECONDS
      guide-engine verify "$RESULTS/run0" --device cuda --attackers "$(attackers)" --quiet 2>&1 | tail -30
      echo "verify wall $((SECONDS - t0)) s"
      ;;
    kernels)
      stage "kernels: Triton vs references"
      (cd "$RESULTS" && $PY -m guide_engine.bench.kernels) 2>&1 | tee "$RESULTS/kernels.log" | tail -22
      stage "one unlearning iteration: references (GUIDE_ENGINE_KERNELS=torch) vs Triton"
      for k in torch auto; do
        GUIDE_ENGINE_KERNELS=$k $PY -m guide_engine.bench.unlearning 40 cuda > "$RESULTS/unlearning-kernels-$k.json"
        $PY -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], {k: round(v['s_per_iter']*1e3, 2) for k, v in d['levers'].items()}, 'ms/iter')" \
          "$RESULTS/unlearning-kernels-$k.json" "kernels=$k"
      done
      ;;
    sampling)
      stage "guide-engine bench (sampling per backend; unlearning levers)"
      guide-engine bench --backends torch,torch-compile,torch-cudagraph,onnxruntime,tensorrt --batch 1,64,256 \
        --out "$RESULTS/bench" --quiet 2>&1 | tail -30
      ;;
    robust)
      stage "robust: GUIDE, defaults, search rounds, look hinge on seeds ${SEEDS:-0-9}, exam 32 x 300, $(attackers)"
      ROUNDS=search_every=50,replay=8,bank_size=256,preserve=8,preserve_weight=8,weight=2.5
      $PY -m guide_engine.bench.robust --seeds "${SEEDS:-0-9}" --device cuda --jobs "${JOBS:-12}" --attack 32x300 \
        --attackers "$(attackers)" --variant base: --variant "rounds:$ROUNDS" \
        --variant "look:$ROUNDS,search_pixel=32,pixel_quantile=0.05" $(defences) \
        --out "$RESULTS/robust" 2>&1 | tee -a "$RESULTS/robust.log" | tail -50
      stage "robust: the harder exam, 16 x 500, on the search rounds and the look hinge"
      $PY -m guide_engine.bench.robust --seeds "${SEEDS:-0-9}" --device cuda --jobs "${JOBS:-12}" --attack 16x500 \
        --attackers "$(attackers)" --variant "rounds:$ROUNDS" --variant "look:$ROUNDS,search_pixel=32,pixel_quantile=0.05" --no-guide \
        --out "$RESULTS/robust" 2>&1 | tee -a "$RESULTS/robust.log" | tail -20
      ;;
    eg3d)
      stage "EG3D FFHQ-512, random init"
      $PY -m guide_engine.bench.eg3d --nvlabs-code "${NVLABS_CODE:?set NVLABS_CODE to NVlabs eg3d/ folder}" \
        --iters "${EG3D_ITERS:-12}" --out "$RESULTS/eg3d" 2>&1 | tail -8
      ;;
    *) echo "unknown stage $what (setup, tests, suite, run, kernels, sampling, robust, eg3d)"; exit 2 ;;
  esac
done
