#!/usr/bin/env bash
# The converged comparison's heavy cells on one GPU machine (issue 11), run
# in one prepared call of the device tool: a CUDA smoke test of every method
# and both backbones on a slice (the run stops at once if it fails), the
# distributed propagation benchmark alone on the idle CPU cores (issue 13),
# then the cells of $JOBS as parallel single-threaded processes sharing the GPU,
# each writing its own tagged CSV, log and stdout under $WORK, killed at
# $BUDGET_S seconds after the start (a cell that is still training then is
# lost; finished cells are already in their CSVs). Results are packed into
# $OUT/results.tgz every 60 s and at the end (the tool brings back at most
# 8 files); benchmarks/device/merge.py folds them into the main CSVs.
#
#   JOBS=benchmarks/device/jobs_20261204.txt BUDGET_S=500 \
#       PYG_CERP_COMMIT=<commit> benchmarks/device/converged_h200.sh
#
# Environment: ROOT (data root holding gowalla-lightgcnpp/ and gowalla/,
# default .gpu/data), DEVICE (default cuda), JOBS (lines "tag backbone
# args...", or "tag cmd COMMAND..." for any command, which sees ROOT, DEVICE
# and WORK), BUDGET_S (default 500), WORK (default /tmp/converged),
# OUT (default $WORK/out), EXTRA (arguments added to every cell, e.g.
# "--subset 600 900" for a dry run), SKIP_SMOKE=1 / SKIP_DIST=1 to skip the
# smoke test / the distributed benchmark, DIST_PARALLEL=1 to run the latter
# beside the cells.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=${ROOT:-.gpu/data}
DEVICE=${DEVICE:-cuda}
BUDGET_S=${BUDGET_S:-500}
WORK=${WORK:-/tmp/converged}
OUT=${OUT:-$WORK/out}
EXTRA=${EXTRA:-}
mkdir -p "$WORK" "$OUT"
export ROOT DEVICE WORK
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
start=$SECONDS
pack() { tar czf "$OUT/results.tgz.tmp" -C "$WORK" --exclude=out --exclude='*.pt' . 2>/dev/null &&
         mv "$OUT/results.tgz.tmp" "$OUT/results.tgz"; }
{ date -u; nproc; free -g | head -2; nvidia-smi -L 2>/dev/null;
  python3 -c 'import torch, torch_geometric as g; print(torch.__version__, g.__version__, torch.cuda.is_available())'; } \
  > "$WORK/machine.txt" 2>&1
cat "$WORK/machine.txt"

cell() {  # cell TAG BACKBONE ARGS... : one process of converged cells
  local tag=$1 backbone=$2; shift 2
  # shellcheck disable=SC2086
  python3 benchmarks/memory_vs_ndcg.py --root "$ROOT" \
    --dataset gowalla-lightgcnpp --name gowalla --backbone "$backbone" \
    --profile converged --threads 1 --device "$DEVICE" --max-epochs 80 \
    --eval-every 2 --patience 4 --out "$WORK" --tag "$tag" "$@" $EXTRA
}

# 1. Smoke: every method, both backbones, 2 epochs on a slice.
if [[ -z "${SKIP_SMOKE:-}" ]] && ! python3 benchmarks/memory_vs_ndcg.py --root "$ROOT" \
    --dataset gowalla-lightgcnpp --name smoke --backbone both \
    --profile converged --subset 600 900 --max-epochs 2 --eval-every 1 \
    --patience 1 --threads 1 --device "$DEVICE" --budgets 0.1 \
    --methods full,magnitude,cerp,cerp-ft,pep,qr-mul,qr-add,hash \
    --out "$WORK/smoke" > "$WORK/smoke.txt" 2>&1; then
  tail -40 "$WORK/smoke.txt"; pack; echo "SMOKE FAILED"; exit 3
fi
echo "smoke passed (or skipped) at $((SECONDS - start)) s"

# 2. The distributed propagation benchmark on the CPU cores (W = 1, 2, 1, 2
# processes, gloo): alone before the cells, or beside them with
# DIST_PARALLEL=1 (each row records the load average).
dist() {
  for w in 1 2 1 2; do
    if [[ $w == 1 ]]; then
      python3 benchmarks/distributed_scaling.py --root "$ROOT" --steps 8 \
        --out "$WORK/distributed_scaling.jsonl"
    else
      python3 -m torch.distributed.run --nproc_per_node=2 \
        benchmarks/distributed_scaling.py --root "$ROOT" --steps 8 \
        --out "$WORK/distributed_scaling.jsonl"
    fi
  done > "$WORK/distributed.out" 2>&1
}
if [[ -z "${SKIP_DIST:-}" && -z "${DIST_PARALLEL:-}" ]]; then
  dist
  echo "distributed benchmark done at $((SECONDS - start)) s"
fi

# 3. The cells, in parallel.
n=0
while read -r tag backbone args; do
  [[ -z "$tag" || "$tag" == \#* ]] && continue
  if [[ "$backbone" == cmd ]]; then  # "tag cmd COMMAND...": run as it is
    script="cd '$PWD' && $args"
  else
    # Seed the cell's CSV with the committed rows, so that finished cells
    # are skipped (merge.py leaves them alone).
    kind=converged
    [[ "$args" == *"--budget-unit bytes"* ]] && kind=bytes
    committed="benchmarks/results/gowalla_${backbone}_${kind}.csv"
    [[ -f "$committed" ]] && cp "$committed" "$WORK/gowalla_${backbone}_${kind}_${tag}.csv"
    script="$(declare -f cell); ROOT='$ROOT' DEVICE='$DEVICE' WORK='$WORK' EXTRA='$EXTRA' cell $tag $backbone $args"
  fi
  timeout -k 5 $((BUDGET_S - (SECONDS - start))) bash -c "$script" \
    > "$WORK/$tag.out" 2>&1 &
  n=$((n + 1))
done < "${JOBS:?JOBS names the job list}"
echo "$n cell processes started at $((SECONDS - start)) s"
if [[ -z "${SKIP_DIST:-}" && -n "${DIST_PARALLEL:-}" ]]; then
  dist &
fi
last=$SECONDS
while [[ -n "$(jobs -r)" ]]; do
  sleep 5
  if (( SECONDS - last >= 60 )); then
    last=$SECONDS; pack
    echo "$((SECONDS - start)) s: $(cat "$WORK"/*.csv 2>/dev/null | grep -vc '^dataset') rows"
  fi
done
wait
pack
grep -h "budget" "$WORK"/*.out | tail -60
echo "done in $((SECONDS - start)) s"
