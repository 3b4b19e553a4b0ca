#!/usr/bin/env python3
"""PyTorch reference for models/benches/sam2_tiny.rs: SAM2 Hiera-tiny (transformers Sam2Model, default
config = tiny, 1024x1024 input, random weights) on the CPU; prints one JSON line with the median
seconds per image for image encoding and for mask decoding (one point, multimask).

    /work/.venv-perceptio/bin/python benches/reference/sam2_tiny.py [--threads N] [--iters K]
"""
import argparse
import json
import statistics
import time

import torch
from transformers import Sam2Config, Sam2Model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--iters", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Sam2Model(Sam2Config()).eval()
    pixels = torch.randn(1, 3, 1024, 1024)
    points = torch.tensor([[[[500.0, 375.0]]]])
    labels = torch.tensor([[[1]]])
    with torch.no_grad():
        emb = model.get_image_embeddings(pixels)  # warm-up
        enc = []
        for _ in range(args.iters):
            t = time.perf_counter()
            emb = model.get_image_embeddings(pixels)
            enc.append(time.perf_counter() - t)
        dec = []
        for _ in range(args.iters * 5):
            t = time.perf_counter()
            model(image_embeddings=emb, input_points=points, input_labels=labels, multimask_output=True)
            dec.append(time.perf_counter() - t)
    print(json.dumps({
        "threads": args.threads,
        "encode_s": statistics.median(enc),
        "decode_s": statistics.median(dec),
    }))


if __name__ == "__main__":
    main()
