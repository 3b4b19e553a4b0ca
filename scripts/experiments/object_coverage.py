"""How big are the synthetic world's objects on the image-token grid?

Reads the referring rows of synth-schema parquet files (their `mask` is the target object's visible pixels) and
prints the median, 10th and 90th percentile object size in pixels and, over a GRID x GRID token split (default
10, the demo encoder's), how many tokens an object covers by at least 20% of their patch (the tokens
`perceptio pretrain-appearance` labels) and how many of those it covers by less than 95% (tokens that see part of
its outline).

Usage: python object_coverage.py 'DATA_DIR/train-*.parquet' [GRID]
Needs pyarrow, numpy and pillow.
"""

import glob
import io
import sys

import numpy as np
import pyarrow.parquet as pq
from PIL import Image


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    grid = int(sys.argv[2]) if len(sys.argv) == 3 else 10
    sizes, labelled, outline = [], 0, 0
    for path in sorted(glob.glob(sys.argv[1])):
        for row in pq.read_table(path, columns=["task", "mask"]).to_pylist():
            if row["task"] != "referring" or row["mask"] is None:
                continue
            mask = np.array(Image.open(io.BytesIO(row["mask"]["bytes"]))) > 0
            h, w = mask.shape
            sizes.append(int(mask.sum()))
            for i in range(grid):
                for j in range(grid):
                    share = mask[i * h // grid:(i + 1) * h // grid, j * w // grid:(j + 1) * w // grid].mean()
                    if share >= 0.2:
                        labelled += 1
                        outline += int(share < 0.95)
    if not sizes:
        sys.exit(f"no referring row with a mask in {sys.argv[1]}")
    p10, p50, p90 = np.percentile(sizes, [10, 50, 90])
    print(f"{len(sizes)} objects: median {p50:.0f} px (10th percentile {p10:.0f}, 90th {p90:.0f})")
    print(f"{labelled} object tokens on a {grid}x{grid} grid, {outline} ({100 * outline / max(labelled, 1):.1f}%) "
          "covered by less than 95%")


if __name__ == "__main__":
    main()
