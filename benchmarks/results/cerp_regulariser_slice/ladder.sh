#!/bin/bash
# Gamma ladder (candidate a), seed 0 (the first runs; runs.sh has every regime), on the 6000 x 8000 Gowalla slice.
cd "$(dirname "$0")/../../.."
OUT=benchmarks/results/cerp_regulariser_slice
COMMON="--root /work/shared/data --dataset gowalla-lightgcnpp --backbone lightgcn --profile converged --subset 6000 8000 --batch-size 4096 --max-epochs 60 --eval-every 2 --patience 3 --bucket-ratios 2 --budgets 0.05,0.01 --threads 1 --out $OUT"
SEEDS=${SEEDS:-0}
run() { nice -n 5 env OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/memory_vs_ndcg.py $COMMON --seeds $SEEDS "$@"; }
for job in ${JOBS:-noreg g0.003 g0.01 g0.03 g0.3}; do
  case $job in
    noreg) run --methods cerp-noreg --tag noreg ;;
    g*) run --methods cerp --gamma ${job#g} --tag $job ;;
    t*) run --methods cerp --gamma ${job#t} --tag thr$job ;;  # placeholder
  esac
done
