#!/usr/bin/env bash
# Burda et al. 2015, Table 1 on one GPU, in pieces of at most SECONDS of training each:
#
#   scripts/reproduce_burda2015.sh DATA_DIR ROOT [SECONDS]
#
# trains the three runs (1-layer VAE k=1, 1-layer IWAE k=50, 2-layer IWAE k=50) side by
# side, each in ROOT/CONFIG, and stops them with SIGTERM after SECONDS: each saves a
# checkpoint at the end of its current epoch. (They share the GPU in equal parts: no
# faster than one after another, but all advance in every piece.) Run the same
# command again to go on; a run that has finished all 3,280 epochs evaluates IS-5000 on
# the 10,000 test images and writes ROOT/CONFIG/summary.json and its pictures. DATA_DIR
# is a TFDS data_dir with mnist prepared (scripts/prepare_data.py). A run that fails
# (not stopped by the timeout) is named with the end of its log, and the script exits 1.
set -u
data_dir=${1:?usage: $0 DATA_DIR ROOT [SECONDS]}
root=${2:?usage: $0 DATA_DIR ROOT [SECONDS]}
seconds=${3:-540}
mkdir -p "$root"
# Three processes on one GPU: each allocates what it needs instead of 75% up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# Compiled programs are kept between pieces: a resumed piece loads them, not compiles them.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$root/.jax_cache}
configs="burda2015_vae_k1 burda2015_iwae_k50 burda2015_iwae_k50_2layer"
started=""  # config:pid of each run started
for config in $configs; do
  if [ -f "$root/$config/summary.json" ]; then
    echo "$config: finished ($root/$config/summary.json)"
    continue
  fi
  timeout -s TERM "$seconds" "${PYTHON:-python}" -m experiments.train \
    --config="experiments/configs/$config.py" --workdir="$root/$config" \
    --config.data_dir="$data_dir" >>"$root/$config.log" 2>&1 &
  started="$started $config:$!"
done
# 124 is timeout's SIGTERM: the piece ended as planned. Anything else but 0 is a failure
# that repeating the piece would not cure, so it is shown, and the script exits 1.
failed=0
for run in $started; do
  config=${run%%:*}
  wait "${run##*:}"
  status=$?
  if [ "$status" -eq 0 ] || [ "$status" -eq 124 ]; then
    echo "$config: $(grep -o 'epoch [0-9]*/[0-9]*.*' "$root/$config.log" | tail -n 1)"
  else
    echo "$config: FAILED (exit $status); the end of $root/$config.log:"
    tail -n 3 "$root/$config.log" | sed 's/^/  /'
    failed=1
  fi
done
exit "$failed"
