#!/usr/bin/env bash
# Does the tiny Perceptio read its image? Depth-question-only training (300 steps) from the demo's world and depth
# tokenizer, evaluated with the depth MSE next to the best image-blind map's MSE and the spread of the predicted
# maps across images (a model that ignores the image has spread 0 and cannot beat the blind MSE):
#   1. the tiny preset (16 image tokens, RoPE base 10^6);
#   2. one image token per depth code (140 px, no pixel shuffle: 100 tokens) and RoPE base 10^4;
#   3. as 2, with the image encoder first pretrained on the training images' depth (`perceptio pretrain-image`);
#   4. the tiny preset on a 16-scene world, to show the image path works: the training loss of the depth codes
#      falls far below what the prior alone allows, which only reading the image can do.
# Usage: scripts/experiments/grounding.sh DEMO_DIR [WORK_DIR]   (DEMO_DIR from `perceptio demo --out DEMO_DIR`)
# Takes about 12 minutes on 2 cores. Measured results are in the note of issue 8 (2026-11-24).
set -euo pipefail
demo=${1:?usage: grounding.sh DEMO_DIR [WORK_DIR]}
work=${2:-$demo/grounding}
bin=${PERCEPTIO_BIN:-target/release/perceptio}
mkdir -p "$work"

depth_only() { # name model data
    PERCEPTIO_DATA="$3" PERCEPTIO_MODEL="$2" PERCEPTIO_OUT="$work/$1" PERCEPTIO_STEPS=300 PERCEPTIO_RESUME=false \
        PERCEPTIO_WEIGHT_REFERRING=0 PERCEPTIO_WEIGHT_POINTS=0 PERCEPTIO_WEIGHT_VQA=0 \
        "$bin" run dataflows/train.yaml > "$work/$1.log" 2>&1
}
report() { # name
    "$bin" eval --checkpoint "$work/$1" --data "$demo/codes" --quiet --out "$work/$1-eval.json" 2> "$work/$1-eval.log" \
        | grep -E '^\| depth \| (MSE|prediction)' | sed "s/^/$1 /"
}
train_files="$demo/codes/train-*.parquet"

"$bin" init-model --data "$train_files" --vqvae "$demo/vqvae" --out "$work/init-16"
"$bin" init-model --data "$train_files" --vqvae "$demo/vqvae" --out "$work/init-100" \
    --image-size 140 --pixel-shuffle 1 --rope-theta 10000
rm -rf "$work/init-100-pre" && cp -r "$work/init-100" "$work/init-100-pre"
"$bin" pretrain-image --model "$work/init-100-pre" --data "$demo/data/train-*.parquet" \
    --val "$demo/data/validation-*.parquet" | tail -1
for name in 16 100 100-pre; do
    depth_only "tokens-$name" "$work/init-$name" "$train_files"
    report "tokens-$name"
done

# 4. memorising a small world: the same model and tokenizer on 16 scenes (its dozen depth rows run out after the
#    train flow's 100 epochs, after 150 steps)
"$bin" synth --out "$work/small" --scenes 16 > /dev/null
PERCEPTIO_DATA="$work/small/data" PERCEPTIO_VQVAE="$demo/vqvae" PERCEPTIO_OUT="$work/small/codes" PERCEPTIO_SPLIT=train \
    "$bin" run dataflows/cache-depth-codes.yaml > "$work/small-codes.log" 2>&1
depth_only memorise "$work/init-16" "$work/small/codes/train-*.parquet"
echo "memorise: depth-code loss (token term) every 50 steps:"
grep -o 'token [0-9.]*' "$work/memorise.log" | awk 'NR % 5 == 0 { printf "%s ", $2 } END { print "" }'
echo "tokens-16: the same term on the full world:"
grep -o 'token [0-9.]*' "$work/tokens-16.log" | awk 'NR % 5 == 0 { printf "%s ", $2 } END { print "" }'
