"""Can a transformer the size of the demo's LLM learn to answer point questions from perfect image features?

An idealised version of the demo's point questions, independent of our Rust code: no image encoder, no rendering.
Each sample is a 10x10 grid of "image tokens" whose features are exact: the marker letter at the letter box's cell
(one row above its point, as the world draws it), a circle flag at each marked point's cell, and the true depth of
every cell (a smooth random field). A fresh trainable linear layer plus a learned position embedding per cell turn
them into the LLM's input at the image slots (the projector's place). The sequence is laid out as ours with the image
after the question: question (20 tokens), 100 image tokens, the assistant header, then the answer. The LLM is a
Qwen2-shaped decoder of the demo's size (4 layers, width 128, 4 heads, SwiGLU 256, RMSNorm, RoPE base 1e4).

Answer formats (FORMAT):
- plain:   "( X )"                                   (the no-depth-tokens ablation's answer)
- span:    <d_start> 100 codes <d_end> "( X )"       (the full model's: one code per cell, 16 depth levels)
- coords:  span, then per letter "L row col", then "( X )"   (the spec's chain of thought, coordinates after the
           span so that every code keeps its fixed distance from its image token)
- readout: span, then per letter "L level" (the depth level at its point, 0-15), then "( X )"
- readout-nospan: the same chain without the span (its ablation)
- where:   span, then per letter "L row col level" (the point's cell, then its level), then "( X )"
- where-nospan: the same chain without the span
- recall:  no image; the pairs "L level" in a random order where the image would be, then the readout chain
Every answer token is supervised (codes in a term of their own, as in our loss). Fresh samples every step, so
nothing can be memorised; accuracy is the arg-max letter on 512 held-out samples, teacher-forced up to the letter
(the chain before it is the model's own only with GREEDY=1).

Measured on 2026-11-25 (2 CPU cores, torch 2.15): see docs/points.md sections 8 and 9.

Run: /tmp/pyv/bin/python scripts/experiments/point_answer_probe.py FORMAT STEPS   (torch in a venv outside the repo)
Environment: SEED, LR (3e-3), BATCH (8), LAYERS (4), EVERY (250), GREEDY=1, SAME_CELL=1, TIE=1, TIE_VALUE=1, PRETRAIN=N
(N steps of the text-only `recall` format first: the letter-level pairs stated where the image would be).
"""

import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

G = 10  # grid side: 100 image tokens, 100 codes
LEVELS = 16  # depth levels of the codes
Q_LEN = 20
# vocabulary
PAD, IM_END, D_START, D_END, LP, RP = range(6)
LETTER0 = 6  # A..E
CODE0 = LETTER0 + 5  # LEVELS codes
DIGIT0 = CODE0 + LEVELS  # 0..9 for coordinates
LEVEL0 = DIGIT0 + 10  # 0..15 spoken depth levels
QTOK0 = LEVEL0 + LEVELS  # question and header words
VOCAB = QTOK0 + Q_LEN + 3
IMG = -1  # marks image slots in the id sequence
GREEDY = os.environ.get("GREEDY") == "1"
# SAME_CELL=1 draws each letter in its point's own cell instead of the row above (one lookup hop fewer)
SAME_CELL = os.environ.get("SAME_CELL") == "1"
# TIE=1 adds the LLM's own input embedding of a cell's letter to that image token (as if the projector had been
# taught to map a drawn letter onto the word for it), so the chain's letter and its image token share a vector
TIE = os.environ.get("TIE") == "1"
# TIE_VALUE=1 adds the embedding of each cell's spoken depth level to its image token too (a value that is a token,
# as in text recall)
TIE_VALUE = os.environ.get("TIE_VALUE") == "1"


def depth_field(gen):
    """A smooth random depth field in [0, 1] over the grid: a tilted ground plus a few bumps."""
    r = torch.arange(G).float().view(G, 1) / (G - 1)
    c = torch.arange(G).float().view(1, G) / (G - 1)
    d = torch.rand(1, generator=gen) * (1 - r) + 0.3 * torch.rand(1, generator=gen) * c
    for _ in range(3):
        cy, cx = torch.rand(2, generator=gen)
        s = 0.1 + 0.2 * torch.rand(1, generator=gen)
        a = torch.rand(1, generator=gen) - 0.5
        d = d + a * torch.exp(-((r - cy) ** 2 + (c - cx) ** 2) / (2 * s * s))
    d = (d - d.min()) / (d.max() - d.min() + 1e-6)
    return d.flatten()  # [100], larger = farther


def sample(gen, fmt):
    """One question: (ids with IMG slots, image features [100, 8], answer start, letter position, truth letter)."""
    while True:
        depth = depth_field(gen)
        n = 3 + int(torch.randint(3, (1,), generator=gen))
        cells = torch.randperm(G * G, generator=gen).tolist()
        pts = []
        used = set()
        for cell in cells:
            r, c = divmod(cell, G)
            if r == 0 or cell in used or (cell - G) in used:
                continue
            if any(abs(depth[cell] - depth[p]) < 0.06 for p in pts):
                continue
            pts.append(cell)
            used.update({cell, cell - G})
            if len(pts) == n:
                break
        if len(pts) == n:
            break
    letter = torch.zeros(G * G, dtype=torch.long)  # 0 = none, 1..5 = A..E
    circle = torch.zeros(G * G)
    for i, p in enumerate(pts):
        letter[p if SAME_CELL else p - G] = i + 1
        circle[p] = 1.0
    feats = torch.cat(
        [F.one_hot(letter, 6).float(), circle.view(-1, 1), depth.view(-1, 1)], dim=1
    )  # [100, 8]
    closest = min(range(n), key=lambda i: depth[pts[i]])
    level = (depth * (LEVELS - 1)).round().long()
    if fmt == "recall":
        # text only: the (letter, level) pairs in a random order where the image would be, then the readout chain
        pairs = torch.randperm(n, generator=gen).tolist()
        told = [t for i in pairs for t in (LETTER0 + i, LEVEL0 + int(level[pts[i]]))]
        ids = list(range(QTOK0, QTOK0 + Q_LEN)) + told + [QTOK0 + Q_LEN + k for k in range(3)]
        fmt = "readout-nospan"
    else:
        ids = list(range(QTOK0, QTOK0 + Q_LEN)) + [IMG] * (G * G) + [QTOK0 + Q_LEN + k for k in range(3)]
    start = len(ids)
    if fmt in ("span", "coords", "readout", "where"):
        ids += [D_START] + [CODE0 + int(v) for v in level] + [D_END]
    if fmt == "coords":
        for i, p in enumerate(pts):
            ids += [LETTER0 + i, DIGIT0 + p // G, DIGIT0 + p % G]
    if fmt in ("readout", "readout-nospan"):
        for i, p in enumerate(pts):
            ids += [LETTER0 + i, LEVEL0 + int(level[p])]
    if fmt in ("where", "where-nospan"):
        for i, p in enumerate(pts):
            ids += [LETTER0 + i, DIGIT0 + p // G, DIGIT0 + p % G, LEVEL0 + int(level[p])]
    ids += [LP]
    letter_pos = len(ids)
    ids += [LETTER0 + closest, RP, IM_END]
    return ids, feats, start, letter_pos, closest, n


def rope(x, theta=1e4):
    b, h, s, d = x.shape
    inv = 1.0 / theta ** (torch.arange(0, d, 2).float() / d)
    ang = torch.arange(s).float().view(-1, 1) * inv.view(1, -1)  # [s, d/2]
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Block(nn.Module):
    def __init__(self, d, heads, ff):
        super().__init__()
        self.n1, self.n2 = nn.RMSNorm(d, eps=1e-6), nn.RMSNorm(d, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d)
        self.o = nn.Linear(d, d, bias=False)
        self.gate, self.up = nn.Linear(d, ff, bias=False), nn.Linear(d, ff, bias=False)
        self.down = nn.Linear(ff, d, bias=False)
        self.heads = heads

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(self.n1(x)).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(rope(q), rope(k), v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, s, d))
        h = self.n2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Llm(nn.Module):
    def __init__(self, d=128, layers=4, heads=4, ff=256):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        self.proj = nn.Sequential(nn.Linear(8, d), nn.GELU(), nn.Linear(d, d))  # the projector's place
        self.pos = nn.Parameter(torch.randn(G * G, d) * 0.02)  # the image encoder's position embedding
        self.blocks = nn.ModuleList(Block(d, heads, ff) for _ in range(layers))
        self.norm = nn.RMSNorm(d, eps=1e-6)
        self.head = nn.Linear(d, VOCAB, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, ids, feats):
        img = ids == IMG
        x = self.embed(ids.clamp(min=0))
        if not img.any():  # text only (the recall format)
            return self.head(self.norm(self.run_blocks(x)))
        tokens = self.proj(feats) + self.pos  # [B, 100, d]
        if TIE:
            letter = feats[..., 1:6]  # one-hot A..E, zero where no letter
            tokens = tokens + letter @ self.embed.weight[LETTER0 : LETTER0 + 5]
        if TIE_VALUE:
            level = (feats[..., 7] * (LEVELS - 1)).round().long()  # [B, 100]
            tokens = tokens + self.embed(LEVEL0 + level)
        x[img] = tokens.reshape(-1, x.shape[-1])
        return self.head(self.norm(self.run_blocks(x)))

    def run_blocks(self, x):
        for blk in self.blocks:
            x = blk(x)
        return x


def make_batch(gen, fmt, n):
    rows = [sample(gen, fmt) for _ in range(n)]
    length = max(len(r[0]) for r in rows)
    ids = torch.full((n, length), PAD, dtype=torch.long)
    feats = torch.stack([r[1] for r in rows])
    tgt = torch.full((n, length), -100, dtype=torch.long)
    code = torch.zeros((n, length), dtype=torch.bool)
    for i, (seq, _, start, _, _, _) in enumerate(rows):
        ids[i, : len(seq)] = torch.tensor(seq)
        tgt[i, start - 1 : len(seq) - 1] = torch.tensor(seq[start:])
        for t in range(start, len(seq)):
            code[i, t - 1] = CODE0 <= seq[t] < CODE0 + LEVELS
    return ids, feats, tgt, code, rows


def loss_of(model, batch):
    ids, feats, tgt, code, _ = batch
    logits = model(ids, feats)
    ce = F.cross_entropy(logits.transpose(1, 2), tgt, reduction="none")  # [B, S]
    text = (tgt >= 0) & ~code
    loss = ce[text].mean()
    if code.any():
        loss = loss + ce[code].mean()
    return loss


@torch.no_grad()
def accuracy(model, batch):
    ids, feats, _, _, rows = batch
    truth = ids
    if GREEDY:
        # the chain between the span (or the answer's start) and the letter is the model's own, greedy
        ids = ids.clone()
        first = min(r[2] + (102 if ids[i, r[2]] == D_START else 0) for i, r in enumerate(rows))
        last = max(r[3] for r in rows)
        for t in range(first, last):
            pred = model(ids, feats)[:, t - 1].argmax(-1)
            for i, r in enumerate(rows):
                own = r[2] + (102 if ids[i, r[2]] == D_START else 0)
                if own <= t < r[3]:
                    ids[i, t] = pred[i]
    logits = model(ids, feats)
    # the chain's tokens (coordinates or levels, after the span), teacher-forced
    chain_ok, chain_n = 0, 0
    # the spoken levels alone: exactly right, and within one level (is the lookup there but imprecise?)
    level_ok, level_near, level_n = 0, 0, 0
    for i, r in enumerate(rows):
        own = r[2] + (102 if ids[i, r[2]] == D_START else 0)
        for t in range(own, r[3] - 1):
            chain_ok += int(logits[i, t - 1].argmax() == truth[i, t])
            chain_n += 1
            if LEVEL0 <= truth[i, t] < LEVEL0 + LEVELS:
                guess = int(logits[i, t - 1, LEVEL0 : LEVEL0 + LEVELS].argmax())
                level_ok += int(guess == truth[i, t] - LEVEL0)
                level_near += int(abs(guess - int(truth[i, t] - LEVEL0)) <= 1)
                level_n += 1
    hits, by_n = 0, {}
    for i, (_, _, _, lp, closest, n) in enumerate(rows):
        pred = int(logits[i, lp - 1, LETTER0 : LETTER0 + n].argmax())
        ok = pred == closest
        hits += ok
        by_n.setdefault(n, []).append(ok)
    per_n = {n: 100.0 * sum(v) / len(v) for n, v in sorted(by_n.items())}
    chain = 100.0 * chain_ok / chain_n if chain_n else float("nan")
    levels = (100.0 * level_ok / level_n, 100.0 * level_near / level_n) if level_n else (float("nan"),) * 2
    return 100.0 * hits / len(rows), sum(per_n.values()) / len(per_n), chain, levels


def main():
    fmt = sys.argv[1] if len(sys.argv) > 1 else "span"
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    seed = int(os.environ.get("SEED", 0))
    torch.manual_seed(seed)
    model = Llm(layers=int(os.environ.get("LAYERS", 4)))
    pretrain = int(os.environ.get("PRETRAIN", 0))
    if pretrain > 0:
        # a text-only stage first: recall each letter's level from pairs stated in the prompt (what a pretrained
        # LLM brings: heads that look a value up by its key)
        train(model, "recall", pretrain, seed)
    train(model, fmt, steps, seed)


def train(model, fmt, steps, seed):
    lr = float(os.environ.get("LR", 3e-3))
    bs = int(os.environ.get("BATCH", 8))
    every = int(os.environ.get("EVERY", 250))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = min(100, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    train_gen = torch.Generator().manual_seed(seed + 1)
    held = make_batch(torch.Generator().manual_seed(10_000 + seed), fmt, 512)
    t0, losses = time.time(), []
    for step in range(1, steps + 1):
        loss = loss_of(model, make_batch(train_gen, fmt, bs))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % every == 0 or step == steps:
            acc, avg, chain, (level_exact, level_near) = accuracy(model, held)
            print(
                f"{fmt} step {step}: loss {sum(losses[-every:]) / len(losses[-every:]):.3f} held-out "
                f"{acc:.1f}% (3/4/5 average {avg:.1f}%), chain tokens {chain:.1f}%, levels {level_exact:.1f}% "
                f"(within one {level_near:.1f}%) {time.time() - t0:.0f}s",
                flush=True,
            )


if __name__ == "__main__":
    main()
