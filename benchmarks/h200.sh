#!/usr/bin/env bash
# Every speed measurement the issues ask of a lent GPU machine, in one call (benchmarks/README.md: "Running these
# on the lent H200"). Needs, in the repository root: .whl/ (ml-collections and tensorboardX wheels for Python 3.12)
# and .devcarry/ (torch_reference.py, a copy of ../shared/reference/torch_reference.py, and COMMIT, the commit
# measured). Results go to $OUT; each part's JSON is rewritten after every row, so a part cut by its limit keeps
# what it measured.
# Sizes can be shrunk for a dry run on a CPU: SMALL=8 FID_N=64 VAE_FUSED=1,10 bash benchmarks/h200.sh
# PARTS picks what runs (default "gan vae fid", about 9 minutes; "layers" times DCGAN-64's layers alone,
# benchmarks/dcgan_layers.py, about 3 minutes; "det" checks that a run repeats bit for bit with and without
# config.deterministic, benchmarks/determinism.py, 4 processes); a part's own name selects it alone:
# e.g. PARTS="vae gan1024 det" bash benchmarks/h200.sh (benchmarks/README.md: the next device session's call).
# BUDGET (seconds, default 560) caps the whole script: each part's limit is cut to what is left of it, and a part
# with under 30 s left is skipped, so the call ends inside the device tool's 600 s.
set -u
OUT=${OUT:-/tmp/jaxgen_h200}
BUDGET=${BUDGET:-560}
mkdir -p "$OUT"
ENV="$OUT/env.txt"
echo "date $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(cat .devcarry/COMMIT 2>/dev/null || git rev-parse HEAD 2>/dev/null)" \
  > "$ENV"
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >> "$ENV" 2>&1 || { echo "pip install of .whl failed" >> "$ENV"; exit 1; }
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# The PyTorch reference: $JAXGEN_TORCH_REFERENCE where set, else the copy carried in .devcarry/; without either,
# jaxgen is timed alone.
export JAXGEN_TORCH_REFERENCE=${JAXGEN_TORCH_REFERENCE:-$PWD/.devcarry/torch_reference.py}
TORCH=--torch-amp
if [ ! -f "$JAXGEN_TORCH_REFERENCE" ]; then
  echo "no PyTorch reference at $JAXGEN_TORCH_REFERENCE: jaxgen timed alone (--skip-torch)" >> "$ENV"
  TORCH=--skip-torch
fi
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  # What the parts import, checked once here rather than failing in each.
  python3 -c "import torch; print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'NO CUDA')"
  python3 -c "import PIL, tqdm, ml_collections, jaxgen.training.loop; import jax, flax, optax; \
print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices()[0].device_kind, \
jax.devices())"
} >> "$ENV" 2>&1
cd benchmarks || exit 1
S=${SECONDS_PER:-2}
B1=${SMALL:-128}
B2=$(( ${SMALL:-128} * 8 ))
PARTS=${PARTS:-gan vae fid}
run() {  # name limit command... (skipped unless its part, e.g. "gan", or its own name, e.g. "gan1024", is in PARTS)
  local name=$1 limit=$2; shift 2
  case " $PARTS " in *" ${name%%[0-9]*} "* | *" $name "*) ;; *) return ;; esac
  local left=$(( BUDGET - SECONDS - 15 ))  # timeout's -k 10 and the line below
  if [ "$left" -lt 30 ]; then
    echo "$name skipped: ${left}s left of BUDGET=${BUDGET}s" >> "$ENV"
    return
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  local t0=$SECONDS
  timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$? ${limit}s-limit took=$(( SECONDS - t0 ))s" >> "$ENV"
}
run gan128 150 python3 gan_throughput.py --batches="$B1" --dtypes=float32,bfloat16 --conv-impls=phase,xla --fused=1,4 \
  --seconds="$S" --repeats=2 $TORCH --out="$OUT/gan128.json"
run gan1024 170 python3 gan_throughput.py --batches="$B2" --dtypes=float32,bfloat16 --conv-impls=phase,xla --fused=1 \
  --norm-impls=flax,fused --seconds="$S" --repeats=2 $TORCH --out="$OUT/gan1024.json"
# The conv VAE: phase convs only, PyTorch first, then rows by steps per call (1, 10, 50; `train.steps_per_dispatch`)
# at both batches: #2's 5x target is at batch 128 (133.5k with 10 on 2026-11-28, 149k needed; anchors.md's plain JAX
# fused 176k). The fused steps are unrolled, so 50 of them compile for about a minute (compile_s in each row).
run vae 200 python3 vae_throughput.py --batches="$B1,$B2" --conv-impls=phase --fused="${VAE_FUSED:-1,10,50}" \
  --seconds="$S" --repeats=2 $([ "$TORCH" = --skip-torch ] && echo --skip-torch) --out="$OUT/vae.json"
# fid_timing.py prints its numbers (no --out): a call brings back at most 8 files.
run fid 80 python3 fid_timing.py --n="${FID_N:-10000}" --size=28,28,1 --batch=500 --full
run layers 200 python3 dcgan_layers.py --batch="$B2" --repeats=10 --out="$OUT/layers.json"
run det 180 python3 determinism.py --batch="$(( B1 * 2 ))" --steps="${DET_STEPS:-30}" --out="$OUT/det.json"
