#!/usr/bin/env bash
# What does the tiny Perceptio's image encoder see? (docs/points.md, section 6)
#   1. solid-colour images asking "What colour is the cube?": 300 VQA steps from the demo's full model. If the
#      answers follow the colour, a text answer can depend on the image at all.
#   2. one object per scene (colour, shape and count questions): 600 VQA steps from the demo's full model.
#   3. the image encoder alone, taught each token's object shape and colour on fresh scenes
#      (`perceptio pretrain-appearance`): the demo's encoder at several learning rates and step counts, a wider
#      and deeper one, one with 7 px patches, and the demo's on scenes of one object; and how big the objects are on the token grid.
# Usage: scripts/experiments/appearance.sh DEMO_DIR [WORK_DIR]   (DEMO_DIR from `perceptio demo --out DEMO_DIR`)
# Needs a python with pyarrow and pillow in $PYTHON (default python3) for step 1. About 25 minutes on 2 cores.
set -euo pipefail
demo=${1:?usage: appearance.sh DEMO_DIR [WORK_DIR]}
work=${2:-$demo/appearance}
bin=${PERCEPTIO_BIN:-target/release/perceptio}
py=${PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
full="$demo/train-full-referring/$(cat "$demo/train-full-referring/latest")"
mkdir -p "$work"

world() { # name config-json: a synth world and its depth codes (the demo's tokenizer)
    echo "$2" > "$work/$1.json"
    "$bin" synth --out "$work/$1" --config "$work/$1.json" > "$work/$1-synth.log"
    for split in train test; do
        PERCEPTIO_DATA="$work/$1/data" PERCEPTIO_VQVAE="$demo/vqvae" PERCEPTIO_OUT="$work/$1/codes" \
            PERCEPTIO_SPLIT=$split "$bin" run dataflows/cache-depth-codes.yaml > "$work/$1-codes-$split.log" 2>&1
    done
}
vqa_only() { # name codes-dir steps: VQA questions alone from the demo's full model, then the held-out table
    PERCEPTIO_DATA="$2/train-*.parquet" PERCEPTIO_MODEL="$full" PERCEPTIO_OUT="$work/$1-model" PERCEPTIO_STEPS=$3 \
        PERCEPTIO_RESUME=false PERCEPTIO_WEIGHT_REFERRING=0 PERCEPTIO_WEIGHT_POINTS=0 PERCEPTIO_WEIGHT_DEPTH=0 \
        "$bin" run dataflows/train.yaml > "$work/$1-train.log" 2>&1
    "$bin" eval --checkpoint "$work/$1-model" --data "$2" --quiet --out "$work/$1-eval.json" 2> "$work/$1-eval.log" \
        | grep -E '^\| vqa' | sed "s/^/$1 /"
}

# 1. solid colours, on the colour questions of a VQA-only world
world vqa '{"scenes": 600, "vqa_per_scene": 20, "tasks": ["vqa"]}'
"$py" "$here/solid_colour_vqa.py" "$work/vqa/codes" "$work/solid/codes"
vqa_only solid "$work/solid/codes" 300

# 2. one object per scene
world one '{"scenes": 1000, "vqa_per_scene": 6, "tasks": ["vqa"], "scene": {"objects": [1, 1]}}'
vqa_only one "$work/one/codes" 600

# how big the objects are on the token grid (the demo world's referring masks)
"$py" "$here/object_coverage.py" "$demo/data/train-*.parquet"

# 3. the encoder alone on fresh scenes (fresh weights in the shapes of each variant's perceptio.json)
variant() { # name steps lr vision-config-json [more pretrain-appearance arguments]
    rm -rf "$work/enc-$1" && cp -r "$demo/model-init" "$work/enc-$1"
    "$py" - "$work/enc-$1/perceptio.json" "$4" <<'PY'
import json, sys
path, change = sys.argv[1], json.loads(sys.argv[2])
cfg = json.load(open(path))
cfg["vlm"]["vision"].update(change)
json.dump(cfg, open(path, "w"), indent=1)
PY
    "$bin" pretrain-appearance --model "$work/enc-$1" --steps "$2" --lr "$3" --fresh "${@:5}" 2> "$work/enc-$1.log" \
        | grep -E 'pretrained|held-out' | sed "s/^/enc-$1 /"
}
variant demo-600 600 3e-3 '{}'
variant demo-600-lr1e-3 600 1e-3 '{}'
variant demo-600-lr3e-4 600 3e-4 '{}'
variant demo-3000-lr1e-3 3000 1e-3 '{}'
variant wide-deep 600 3e-3 '{"hidden_size": 128, "num_hidden_layers": 4, "intermediate_size": 256}'
variant patch-7 600 3e-3 '{"patch_size": 7}'
variant one-object 600 3e-3 '{}' --objects 1 1
