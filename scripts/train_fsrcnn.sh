#!/usr/bin/env bash
# The `bench train` commands that made the shipped FSRCNN weights (models/weights/fsrcnn_x{2,3,4}.safetensors);
# models/weights/MODEL_CARD.md records each stage's iterations, wall time and validation PSNR.
#   scripts/train_fsrcnn.sh [DATA]     DATA = the shared data folder (default ../shared/data); about 62 minutes
#                                      on one thread, one stage at a time
# x2 is trained from scratch; x3/x4 follow the FSRCNN paper: the x2 layers are shared, a new deconvolution is
# trained alone first, then every layer. Training data: DATA/train (T91 + BSD200); every 10th image is held out
# for validation, never a test set. The --time-limit caps were part of the recipe (iterations reached: card).
set -euo pipefail
DATA=${1:-../shared/data}
OUT=${BENCH_TRAIN_OUT:-.cache/train/fsrcnn}
W=models/weights
C="--model fsrcnn --train $DATA/train --loss l1-y --batch 32 --threads 1 --no-progress --ckpt-every 500"

bench train $C --scale 2 --patch 32 --iters 14000 --lr 1e-3 --warmup 100 --min-lr 1e-6 --val-every 1000 \
    --time-limit 42 --out $OUT/x2a
bench train $C --scale 2 --patch 32 --iters 5000 --lr 2e-4 --warmup 50 --min-lr 1e-6 --val-every 1000 \
    --time-limit 13 --init $OUT/x2a/last.pt --out $OUT/x2b --export $W/fsrcnn_x2.safetensors

train_scale() {  # scale, LR patch, iterations and time cap of the last stage
    local s=$1 patch=$2 iters=$3 cap=$4
    bench train $C --scale $s --patch $patch --iters 2500 --lr 1e-3 --warmup 50 --min-lr 1e-5 --val-every 500 \
        --time-limit 4 --train-only 'deconv.*' --init $OUT/x2b/last.pt --out $OUT/x${s}a
    bench train $C --scale $s --patch $patch --iters 2000 --lr 2e-4 --warmup 50 --min-lr 1e-6 --val-every 500 \
        --time-limit 5 --init $OUT/x${s}a/last.pt --out $OUT/x${s}b
    bench train $C --scale $s --patch $patch --iters $iters --lr 5e-4 --warmup 50 --min-lr 1e-6 --val-every 1000 \
        --time-limit $cap --init $OUT/x${s}b/last.pt --out $OUT/x${s}c --export $W/fsrcnn_x$s.safetensors
}
train_scale 3 24 5000 4
train_scale 4 16 7000 3.5
