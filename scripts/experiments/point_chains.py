"""How the point chains of thought in `perceptio eval` predictions relate to the true depth order.

For every point question of a predictions file (`eval-predictions.parquet`, written beside `eval.json`), reads the
generated chain ("A 13, B 17, C 10. (B)"), and counts, over every pair of marked points to which the chain gives
different levels, how often the higher level goes to the nearer point (the test split's `point_depth`). Reading the
image gives well over 50%; a chain that is a prior gives about 50%. Also prints how many distinct chains there are.

Run: /tmp/pyv/bin/python scripts/experiments/point_chains.py TEST.parquet PREDICTIONS.parquet [...]
(pyarrow in a venv outside the repo). Used for docs/points.md, section 10.
"""

import collections
import re
import sys

import pyarrow.parquet as pq


def main():
    cols = ["sample_id", "task", "point_labels", "point_depth"]
    truth = {r["sample_id"]: r for r in pq.read_table(sys.argv[1], columns=cols).to_pylist()}
    for path in sys.argv[2:]:
        rows = pq.read_table(path, columns=["sample_id", "task", "generated"]).to_pylist()
        points = [r for r in rows if r["task"] == "points"]
        chains = [re.sub(r"<d_\d+>|<d_start>|<d_end>", "", r["generated"]).strip() for r in points]
        agree = pairs = 0
        for r, chain in zip(points, chains):
            t = truth[r["sample_id"]]
            stated = {label: int(level) for label, level in re.findall(r"([A-E]) (\d+)", chain)}
            depth = dict(zip(t["point_labels"], t["point_depth"]))
            for a in depth:
                for b in depth:
                    if a < b and a in stated and b in stated and stated[a] != stated[b]:
                        pairs += 1
                        agree += (stated[a] > stated[b]) == (depth[a] < depth[b])
        common = collections.Counter(chains).most_common(2)
        print(f"{path}: {len(points)} point questions, {len(set(chains))} distinct chains, most common {common}")
        print(f"  pairs ordered as the true depth: {agree} / {pairs} = {100 * agree / max(pairs, 1):.1f}%")


if __name__ == "__main__":
    main()
