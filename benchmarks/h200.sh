#!/usr/bin/env bash
# Every speed measurement the issues ask of a lent GPU machine, in one call (benchmarks/README.md: "Running these
# on the lent H200"). Needs, in the repository root: .whl/ (ml-collections and tensorboardX wheels for Python 3.12)
# and .devcarry/torch_reference.py (a copy of ../shared/reference/torch_reference.py). Results go to $OUT.
# Sizes can be shrunk for a dry run on a CPU: SMALL=8 FID_N=64 VAE_FUSED=1,10 bash benchmarks/h200.sh
# PARTS picks what runs (default "gan vae fid", about 9 minutes; "layers" times DCGAN-64's layers alone,
# benchmarks/dcgan_layers.py, about 3 minutes; "det" checks that a run repeats bit for bit with and without
# config.deterministic, benchmarks/determinism.py, 4 processes); a part's own name selects it alone:
# e.g. PARTS="vae gan1024 det" bash benchmarks/h200.sh (benchmarks/README.md: the next device session's call)
set -u
OUT=${OUT:-/tmp/jaxgen_h200}
mkdir -p "$OUT"
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
fi
# The PyTorch reference: $JAXGEN_TORCH_REFERENCE where set, else the copy carried in .devcarry/.
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export JAXGEN_TORCH_REFERENCE=${JAXGEN_TORCH_REFERENCE:-$PWD/.devcarry/torch_reference.py}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'torch', \
torch.__version__, jax.devices())"
} > "$OUT/env.txt" 2>&1
cd benchmarks || exit 1
S=${SECONDS_PER:-2}
B1=${SMALL:-128}
B2=$(( ${SMALL:-128} * 8 ))
PARTS=${PARTS:-gan vae fid}
run() {  # name limit command... (skipped unless its part, e.g. "gan", or its own name, e.g. "gan1024", is in PARTS)
  local name=$1 limit=$2; shift 2
  case " $PARTS " in *" ${name%%[0-9]*} "* | *" $name "*) ;; *) return ;; esac
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$? ${limit}s-limit took=$(( SECONDS - t0 ))s" >> "$OUT/env.txt"
}
run gan128 150 python3 gan_throughput.py --batches="$B1" --dtypes=float32,bfloat16 --conv-impls=phase,xla --fused=1,4 \
  --seconds="$S" --repeats=2 --torch-amp --out="$OUT/gan128.json"
run gan1024 170 python3 gan_throughput.py --batches="$B2" --dtypes=float32,bfloat16 --conv-impls=phase,xla --fused=1 \
  --norm-impls=flax,fused --seconds="$S" --repeats=2 --torch-amp --out="$OUT/gan1024.json"
# The conv VAE: phase convs only (the 2026-11-28 run's limit stopped before xla), and 50 fused steps per call beside
# 10 (#2's 5x target at batch 128: 133.5k with 10 on 2026-11-28, 149k needed; anchors.md's plain JAX fused 176k).
# A CPU dry run: VAE_FUSED=1,10 (50 steps per call take seconds there).
run vae 200 python3 vae_throughput.py --batches="$B1,$B2" --conv-impls=phase --fused="${VAE_FUSED:-1,10,50}" \
  --seconds="$S" --repeats=2 --out="$OUT/vae.json"
run fid 80 python3 fid_timing.py --n="${FID_N:-10000}" --size=28,28,1 --batch=500 --full
run layers 200 python3 dcgan_layers.py --batch="$B2" --repeats=10 --out="$OUT/layers.json"
run det 180 python3 determinism.py --batch="$(( B1 * 2 ))" --steps="${DET_STEPS:-30}" --out="$OUT/det.json"
