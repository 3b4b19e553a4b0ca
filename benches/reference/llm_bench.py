"""PyTorch (eager) side of the LLM decode benchmark: models/benches/llm_decode.rs runs it.

Builds a randomly initialised transformers Qwen2ForCausalLM of the given shape (f32, CPU), then measures
  prefill: one forward pass over a prompt of `--prompt` tokens (tokens/s)
  decode:  `--decode` greedy steps with the KV cache (DynamicCache), one token at a time (tokens/s)
each as the best of `--repeats` runs, with `--threads` intra-op threads. Prints one JSON line.
"""

import argparse
import json
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, required=True)
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--heads", type=int, required=True)
    ap.add_argument("--kv-heads", type=int, required=True)
    ap.add_argument("--ffn", type=int, required=True)
    ap.add_argument("--vocab", type=int, required=True)
    ap.add_argument("--tied", action="store_true")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.ffn,
                      num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                      tie_word_embeddings=a.tied, max_position_embeddings=4096)
    model = Qwen2ForCausalLM(cfg).eval().float()
    ids = torch.randint(0, a.vocab, (1, a.prompt))
    best_prefill, best_decode = float("inf"), float("inf")
    with torch.inference_mode():
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            out = model(ids, use_cache=True, logits_to_keep=1)
            best_prefill = min(best_prefill, time.perf_counter() - t0)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            t0 = time.perf_counter()
            for _ in range(a.decode):
                out = model(nxt, past_key_values=past, use_cache=True, logits_to_keep=1)
                past = out.past_key_values
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            best_decode = min(best_decode, time.perf_counter() - t0)
    print(json.dumps({"prefill_tok_s": a.prompt / best_prefill, "decode_tok_s": a.decode / best_decode,
                      "threads": torch.get_num_threads(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
