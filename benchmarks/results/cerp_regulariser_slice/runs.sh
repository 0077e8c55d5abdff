#!/bin/bash
# All candidates (JOBS=...), on the 6000 x 8000 Gowalla slice.
cd "$(dirname "$0")/../../.."
OUT=benchmarks/results/cerp_regulariser_slice
COMMON="--root /work/shared/data --dataset gowalla-lightgcnpp --backbone lightgcn --profile converged --subset 6000 8000 --batch-size 4096 --max-epochs 60 --eval-every 2 --patience 3 --bucket-ratios 2 --budgets 0.05,0.01 --threads 1 --out $OUT"
SEEDS=${SEEDS:-0}
run() { nice -n 5 env OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/memory_vs_ndcg.py $COMMON --seeds $SEEDS "$@"; }
for job in ${JOBS:-noreg g0.003 g0.01 g0.03 g0.3}; do
  case $job in
    noreg) run --methods cerp-noreg --tag noreg ;;
    g*) run --methods cerp --gamma ${job#g} --tag $job ;;
    t*) run --methods cerp --gamma ${job#t} --reg-thresholds-only --tag $job ;;
    snoreg) run --methods cerp-noreg --prune-epochs 12 --pace-epochs 8 --tag $job ;;
    # slow pace: 8 epochs of plan (12 in phase 1), gamma x0.75 per epoch
    s*) run --methods cerp --gamma ${job#s} --prune-epochs 12 --pace-epochs 8 --gamma-decay 0.75 --tag $job ;;
    S*) run --methods cerp --gamma ${job#S} --reg-thresholds-only --prune-epochs 12 --pace-epochs 8 --gamma-decay 0.75 --tag $job ;;
    # phase 1 at batch 1024 (89 steps per epoch, as full Gowalla at 8192)
    Pnoregs) run --methods cerp-noreg --prune-batch-size 1024 --prune-epochs 12 --pace-epochs 8 --tag $job ;;
    Pnoreg) run --methods cerp-noreg --prune-batch-size 1024 --tag $job ;;
    Pg*) run --methods cerp --gamma ${job#Pg} --prune-batch-size 1024 --tag $job ;;
    Pt*) run --methods cerp --gamma ${job#Pt} --reg-thresholds-only --prune-batch-size 1024 --tag $job ;;
    Ps*) run --methods cerp --gamma ${job#Ps} --prune-batch-size 1024 --prune-epochs 12 --pace-epochs 8 --gamma-decay 0.75 --tag $job ;;
    PS*) run --methods cerp --gamma ${job#PS} --reg-thresholds-only --prune-batch-size 1024 --prune-epochs 12 --pace-epochs 8 --gamma-decay 0.75 --tag $job ;;
    # thresholds only, gamma constant over phase 1
    Pc*) run --methods cerp --gamma ${job#Pc} --reg-thresholds-only --gamma-decay 1 --prune-batch-size 1024 --tag $job ;;
    # values and thresholds, gamma constant over phase 1
    Pk*) run --methods cerp --gamma ${job#Pk} --gamma-decay 1 --prune-batch-size 1024 --tag $job ;;
    Pft*) run --methods cerp-ft --gamma ${job#Pft} --prune-batch-size 1024 ${FTFLAGS} --tag $job ;;
    # slower still: 12 epochs of plan (16 in phase 1), gamma x0.8 per epoch
    Pv*) run --methods cerp --gamma ${job#Pv} --prune-batch-size 1024 --prune-epochs 16 --pace-epochs 12 --gamma-decay 0.8 --tag $job ;;
    Pfg*) run --methods cerp-ft --gamma ${job#Pfg} --prune-batch-size 1024 --tag $job ;;
    ft*) run --methods cerp-ft --gamma ${job#ft} ${FTFLAGS} --tag $job ;;
  esac
done
