#!/usr/bin/env bash
# The converged comparison of issue 11 on Gowalla (CERP's split, with the
# published validation split of gowalla-lightgcnpp), cell group by cell
# group, most informative first. Every finished (method, budget, seed) row is
# appended to benchmarks/results/gowalla_<backbone>_converged.csv at once and
# skipped on a rerun, so this script resumes where a killed run stopped:
#
#   nohup benchmarks/converged_gowalla.sh > /tmp/converged.log 2>&1 &
#
# Environment: ROOT (data root, default ../shared/data), THREADS (default 2),
# DEVICE (default cpu), BACKBONE (default lightgcn), CELLS (default all, or
# a space-separated list of the group names below).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-../shared/data}
THREADS=${THREADS:-2}
DEVICE=${DEVICE:-cpu}
BACKBONE=${BACKBONE:-lightgcn}
run() {
  python benchmarks/memory_vs_ndcg.py --root "$ROOT" \
    --dataset gowalla-lightgcnpp --name gowalla --backbone "$BACKBONE" \
    --profile converged --threads "$THREADS" --device "$DEVICE" \
    --max-epochs 80 --eval-every 2 --patience 4 "$@"
}
declare -A GROUP=(
  # The full table and its magnitude pruning (one process: the converged
  # full table is reused for every budget).
  [full]="--methods full,magnitude --budgets 0.05,0.01,0.1"
  [cerp5]="--methods cerp,cerp-noreg --budgets 0.05"
  [base5]="--methods qr-mul,pep,hash,qr-add --budgets 0.05"
  [cerp1]="--methods cerp,cerp-noreg --budgets 0.01"
  [base1]="--methods qr-mul,pep,hash,qr-add --budgets 0.01"
  [cerp10]="--methods cerp,cerp-noreg --budgets 0.1"
  [base10]="--methods qr-mul,pep,hash,qr-add --budgets 0.1"
  [seeds]="--methods cerp --budgets 0.05,0.01,0.1 --seeds 1,2"
  [bseeds]="--methods qr-mul --budgets 0.01 --seeds 1,2"
  [mseeds]="--methods full,magnitude --budgets 0.05,0.1 --seeds 1,2"
)
ORDER=${CELLS:-"full cerp5 base5 cerp1 base1 cerp10 base10 seeds bseeds mseeds"}
for g in $ORDER; do
  echo "== $g: ${GROUP[$g]} ($(date -u +%FT%TZ), commit $(git rev-parse --short HEAD))"
  # shellcheck disable=SC2086
  run ${GROUP[$g]}
done
