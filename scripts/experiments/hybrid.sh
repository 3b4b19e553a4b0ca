#!/usr/bin/env bash
# docs/points.md, section 7: an image encoder that sees shape, and an LLM that reads it.
#   1. the encoder alone on fresh scenes (`perceptio pretrain-appearance --fresh`): the plain InternViT and the
#      hybrid one (a convolutional stem before 16 px patches), asked each object token's shape or only each
#      object's centre token's.
#   2. each pretrained encoder put into the demo's full model, then 600 VQA steps on a one-object world (as in
#      section 6), with the InternViT training along or kept fixed.
# Usage: scripts/experiments/hybrid.sh DEMO_DIR [WORK_DIR]   (DEMO_DIR from `perceptio demo --out DEMO_DIR`)
# Needs python3 (json only). About 25 minutes on 2 cores.
set -euo pipefail
demo=${1:?usage: hybrid.sh DEMO_DIR [WORK_DIR]}
work=${2:-$demo/hybrid}
bin=${PERCEPTIO_BIN:-target/release/perceptio}
full="$demo/train-full-referring/$(cat "$demo/train-full-referring/latest")"
mkdir -p "$work"

edit() { # perceptio.json python-expression-on-cfg
    python3 - "$1" "$2" <<'PY'
import json, sys
path, change = sys.argv[1], sys.argv[2]
cfg = json.load(open(path))
exec(change, {"cfg": cfg})
json.dump(cfg, open(path, "w"), indent=1)
PY
}
hybrid='v = cfg["vlm"]["vision"]; v.update(patch_size=16, image_size=16 * v["image_size"] // v["patch_size"], conv_stem=[32, 64, 64, 64, 64])'

# 1. the encoder alone (fresh weights in the shapes of each variant's perceptio.json)
encoder() { # name vision-edit steps lr [more pretrain-appearance arguments]
    rm -rf "$work/enc-$1" && cp -r "$demo/model-init" "$work/enc-$1"
    edit "$work/enc-$1/perceptio.json" "$2"
    "$bin" pretrain-appearance --model "$work/enc-$1" --steps "$3" --lr "$4" --fresh "${@:5}" 2> "$work/enc-$1.log" \
        | grep -E 'pretrained|held-out' | sed "s/^/enc-$1 /"
}
encoder vit-centres 'pass' 600 3e-3 --shape-target centres --object-weight 16
encoder stem2 'cfg["vlm"]["vision"]["conv_stem"] = [16, 32]' 600 3e-3
encoder hybrid "$hybrid" 600 1e-3
encoder hybrid-centres "$hybrid" 600 1e-3 --shape-target centres --object-weight 16
encoder hybrid-centres-lr3e-3 "$hybrid" 600 3e-3 --shape-target centres

# 2. the one-object world of section 6, coded with the demo's depth tokenizer
one="$work/one"
if [ ! -d "$one/codes" ]; then
    echo '{"scenes": 1000, "vqa_per_scene": 6, "tasks": ["vqa"], "scene": {"objects": [1, 1]}}' > "$work/one.json"
    "$bin" synth --out "$one" --config "$work/one.json" > "$work/one-synth.log"
    for split in train test; do
        PERCEPTIO_DATA="$one/data" PERCEPTIO_VQVAE="$demo/vqvae" PERCEPTIO_OUT="$one/codes" PERCEPTIO_SPLIT=$split \
            "$bin" run dataflows/cache-depth-codes.yaml > "$work/one-codes-$split.log" 2>&1
    done
fi
vqa_with() { # name encoder-dir trainable(True/False): the demo's full model with that encoder, 600 VQA steps
    rm -rf "$work/$1" && cp -r "$full" "$work/$1" && rm -f "$work/$1/image.optim.safetensors"
    cp "$work/enc-$2/image.safetensors" "$work/$1/"
    python3 - "$work/$1/perceptio.json" "$work/enc-$2/perceptio.json" "$3" <<'PY'
import json, sys
path, enc, trainable = sys.argv[1], sys.argv[2], sys.argv[3] == "True"
cfg = json.load(open(path))
cfg["vlm"]["vision"] = json.load(open(enc))["vlm"]["vision"]
cfg["trainable"]["vision_encoder"] = trainable
json.dump(cfg, open(path, "w"), indent=1)
PY
    PERCEPTIO_DATA="$one/codes/train-*.parquet" PERCEPTIO_MODEL="$work/$1" PERCEPTIO_OUT="$work/$1-model" \
        PERCEPTIO_STEPS=600 PERCEPTIO_RESUME=false PERCEPTIO_WEIGHT_REFERRING=0 PERCEPTIO_WEIGHT_POINTS=0 \
        PERCEPTIO_WEIGHT_DEPTH=0 "$bin" run dataflows/train.yaml > "$work/$1-train.log" 2>&1
    "$bin" eval --checkpoint "$work/$1-model" --data "$one/codes" --quiet --out "$work/$1-eval.json" \
        2> "$work/$1-eval.log" | grep -E '`(shape|colour)`' | sed "s/^/$1 /"
}
vqa_with hybrid-trained hybrid-centres True
vqa_with hybrid-fixed hybrid-centres False
vqa_with vit-fixed vit-centres False
