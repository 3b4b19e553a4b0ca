"""docs/points.md, section 7: how hard is object shape in the synth world for small networks of other kinds?

An independent check in PyTorch (not part of the build): small networks learn each referred object's shape from a
referring-only world's images and masks (`perceptio synth`), and are scored on the held-out split.
  tokens  every cell of a 10 x 10 grid that the object's mask covers >= 20% of is asked its shape
  centre  only the cell holding the mask's centroid is asked
  crop    the object's square bounding box, scaled to 32 x 32, is classified (the object given, not found)
Networks: a CNN of five 3x3 layers (four of stride 2) on 160 px; a ViT the size of the demo's InternViT (14 px
patches, 64 wide, 2 layers, 4 heads); the same ViT after the CNN ("hybrid"); a small CNN on the crops.

Usage (a venv with torch, numpy, pyarrow, pillow):
  echo '{"scenes": 2000, "tasks": ["referring"], "referring_per_scene": 4}' > /tmp/ref.json
  target/release/perceptio synth --out /tmp/refw --config /tmp/ref.json --seed 3
  python scripts/experiments/torch_shape_probe.py /tmp/refw/data
"""

import io
import json
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

SHAPES = ["sphere", "cube", "cylinder", "cone"]
GRID = 10


def read_split(data, split):
    """Images [N, 3, 128, 128] (normalised), masks [N, 128, 128] and shape classes [N] of a split's rows."""
    rows = pq.read_table(f"{data}/{split}-00000-of-00001.parquet").to_pylist()
    images, masks, shapes = [], [], []
    for r in rows:
        images.append(np.array(Image.open(io.BytesIO(r["image"]["bytes"])).convert("RGB")))
        m = np.array(Image.open(io.BytesIO(r["mask"]["bytes"]))) > 0
        masks.append(m[..., 0] if m.ndim == 3 else m)
        target = next(o for o in json.loads(r["scene"])["objects"] if o["id"] == r["target_object"])
        shapes.append(SHAPES.index(target["shape"]))
    x = torch.tensor(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.5) / 0.25, torch.tensor(np.stack(masks)).float(), torch.tensor(shapes)


def cell_labels(masks, shapes, centre):
    """[N, G, G] shape class per cell, -1 where not asked."""
    cover = F.adaptive_avg_pool2d(masks[:, None], GRID)[:, 0]  # [N, G, G]
    asked = torch.where(cover >= 0.2, shapes[:, None, None].expand(-1, GRID, GRID), -1)
    if not centre:
        return asked
    out = torch.full_like(asked, -1)
    for i in range(len(shapes)):
        ys, xs = torch.nonzero(masks[i], as_tuple=True)
        out[i, int(ys.float().mean() * GRID / 128), int(xs.float().mean() * GRID / 128)] = shapes[i]
    return out


def cnn_stem(out):
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, 2, 1), nn.GELU(), nn.Conv2d(32, 64, 3, 2, 1), nn.GELU(),
        nn.Conv2d(64, 64, 3, 2, 1), nn.GELU(), nn.Conv2d(64, 64, 3, 2, 1), nn.GELU(),
        nn.Conv2d(64, 64, 3, 1, 1), nn.GELU(), nn.Conv2d(64, out, 1))


class CellNet(nn.Module):
    """Images -> [N, 4, G, G] shape logits per cell."""

    def __init__(self, kind, d=64):
        super().__init__()
        self.kind, self.size = kind, 160 if kind in ("cnn", "hybrid") else 140
        if kind == "cnn":
            self.stem = cnn_stem(4)
            return
        self.stem = cnn_stem(d) if kind == "hybrid" else nn.Conv2d(3, d, 14, 14)
        self.pos = nn.Parameter(torch.randn(1, GRID * GRID, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, 0.0, activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, 4)

    def forward(self, x):
        x = self.stem(F.interpolate(x, size=self.size, mode="bilinear", align_corners=False))
        if self.kind == "cnn":
            return x
        t = self.blocks(x.flatten(2).transpose(1, 2) + self.pos)
        return self.head(t).transpose(1, 2).reshape(x.shape[0], 4, GRID, GRID)


def crops(images, masks, side=32):
    out = []
    for im, m in zip(images, masks):
        ys, xs = torch.nonzero(m, as_tuple=True)
        half = int(max(ys.max() - ys.min(), xs.max() - xs.min())) // 2 + 2
        cy, cx = int(ys.min() + ys.max()) // 2, int(xs.min() + xs.max()) // 2
        padded = F.pad(im, (64, 64, 64, 64))
        c = padded[:, cy - half + 64:cy + half + 64, cx - half + 64:cx + half + 64]
        out.append(F.interpolate(c[None], size=side, mode="bilinear", align_corners=False)[0])
    return torch.stack(out)


def train(name, model, x, y, vx, vy, steps=600, lr=1e-3, batch=16):
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    start = time.time()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx], ignore_index=-1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = torch.cat([model(vx[i:i + 64]).argmax(1) for i in range(0, len(vx), 64)])
    asked = vy >= 0
    acc = (pred[asked] == vy[asked]).float().mean().item()
    commonest = torch.bincount(vy[asked]).max().item() / asked.sum().item()
    print(f"{name}: {steps} steps, lr {lr}: shape {100 * acc:.1f}% of {asked.sum().item()} asked "
          f"(commonest shape {100 * commonest:.1f}%), {time.time() - start:.0f}s", flush=True)


def main():
    data = sys.argv[1]
    torch.set_num_threads(2)
    x, m, s = read_split(data, "train")
    vx, vm, vs = read_split(data, "test")
    for centre in (False, True):
        y, vy = cell_labels(m, s, centre), cell_labels(vm, vs, centre)
        target = "centre" if centre else "tokens"
        for kind in ("cnn", "vit", "hybrid"):
            torch.manual_seed(0)
            train(f"{target} {kind}", CellNet(kind), x, y, vx, vy)
    torch.manual_seed(0)
    small = nn.Sequential(
        nn.Conv2d(3, 32, 3, 1, 1), nn.GELU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, 1, 1), nn.GELU(),
        nn.MaxPool2d(2), nn.Conv2d(64, 64, 3, 1, 1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(64, 4))
    train("crop cnn", small, crops(x, m), s, crops(vx, vm), vs, steps=600, batch=32)


if __name__ == "__main__":
    main()
