"""Solid-colour VQA rows: can a text answer of the tiny Perceptio depend on its image at all?

Reads a synth-schema codes folder (rows with `depth_codes`, as `dataflows/cache-depth-codes.yaml` writes them) and
keeps its colour questions as templates. Each kept row gets a 128 x 128 image of one solid colour, drawn at random
from the world's eight, the question "What colour is the cube?" and that colour's name as the answer. The other
columns (depth codes included) stay, so `dataflows/train.yaml` and `perceptio eval` take the rows unchanged.

Usage: python solid_colour_vqa.py SRC_CODES_DIR OUT_CODES_DIR
Needs pyarrow and pillow (pip install pyarrow pillow; any venv outside the repository).
"""

import glob
import io
import os
import random
import sys

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

# The world's colours with RGB values near their albedos.
COLOURS = {
    "gray": (128, 128, 128),
    "red": (200, 40, 40),
    "blue": (40, 70, 210),
    "green": (40, 180, 60),
    "brown": (130, 80, 40),
    "purple": (140, 50, 170),
    "cyan": (40, 200, 210),
    "yellow": (230, 210, 40),
}


def convert(src: str, dst: str, split: str, rng: random.Random) -> int:
    files = sorted(glob.glob(os.path.join(src, f"{split}-*.parquet")))
    if not files:
        sys.exit(f"no {split}-*.parquet in {src}")
    table = pa.concat_tables(pq.read_table(f) for f in files)
    rows = [r for r in table.to_pylist() if r["task"] == "vqa" and r["kind"] == "colour"]
    if not rows:
        sys.exit(f"{src}: no colour question in the {split} split")
    for r in rows:
        name = rng.choice(sorted(COLOURS))
        buf = io.BytesIO()
        Image.new("RGB", (128, 128), COLOURS[name]).save(buf, format="PNG")
        r["image"] = {"bytes": buf.getvalue(), "path": None}
        r["width"], r["height"] = 128, 128
        r["question"] = "What colour is the cube?"
        r["answer"] = name
    out = os.path.join(dst, f"{split}-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), out)
    return len(rows)


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    os.makedirs(dst, exist_ok=True)
    rng = random.Random(1)
    for split in ["train", "test"]:
        print(f"{split}: {convert(src, dst, split, rng)} rows -> {dst}")


if __name__ == "__main__":
    main()
