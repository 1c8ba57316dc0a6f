#!/usr/bin/env python3
"""The PyTorch side of benchmarks/model_bench.cpp: the same Llama architecture (RMSNorm, rotary
embedding on interleaved pairs, grouped-query causal attention, SwiGLU, tied classifier), the same
shapes and the same three measurements, written the way the Python RLHF stacks run their policies
(eager PyTorch, log_softmax + gather for the token log-probs, autograd for the backward):

    training tokens/s  : log-probs of a [8, 256] batch, forward + backward of their sum
    forward tokens/s   : the same log-probs under torch.no_grad()
    sampling tokens/s  : batch 1 from BOS, temperature 1, with a KV cache

Usage: llama_torch.py <stories260K|10M> <threads> [stories260K.bin]
Prints one markdown table row, like model_bench. Needs Debian's python3-torch (/usr/bin/python3);
exits with code 77 and a message when torch is missing.
"""
import math
import resource
import struct
import sys
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    print("llama_torch.py: PyTorch is not installed (Debian: apt-get install python3-torch); skipped")
    sys.exit(77)


def read_config(path):
    with open(path, "rb") as f:
        dim, hidden, layers, heads, kv_heads, vocab, seq = struct.unpack("7i", f.read(28))
    return dict(dim=dim, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, vocab=abs(vocab), seq=seq)


TEN_MILLION = dict(dim=256, hidden=688, layers=12, heads=8, kv_heads=4, vocab=4096, seq=256)


class Llama(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        d, kv = c["dim"], c["kv_heads"] * (c["dim"] // c["heads"])
        self.emb = torch.nn.Parameter(torch.randn(c["vocab"], d) * 0.02)
        self.layers = torch.nn.ModuleList()
        for _ in range(c["layers"]):
            layer = torch.nn.Module()
            layer.att_norm = torch.nn.Parameter(torch.ones(d))
            layer.wq = torch.nn.Linear(d, d, bias=False)
            layer.wk = torch.nn.Linear(d, kv, bias=False)
            layer.wv = torch.nn.Linear(d, kv, bias=False)
            layer.wo = torch.nn.Linear(d, d, bias=False)
            layer.ffn_norm = torch.nn.Parameter(torch.ones(d))
            layer.w1 = torch.nn.Linear(d, c["hidden"], bias=False)
            layer.w2 = torch.nn.Linear(c["hidden"], d, bias=False)
            layer.w3 = torch.nn.Linear(d, c["hidden"], bias=False)
            self.layers.append(layer)
        self.norm = torch.nn.Parameter(torch.ones(d))
        hd = d // c["heads"]
        inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.outer(torch.arange(c["seq"]).float(), inv)
        self.register_buffer("cos", ang.cos())
        self.register_buffer("sin", ang.sin())

    @staticmethod
    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w

    def rope(self, x, pos):  # x [B, T, H, hd]: rotate pairs (2i, 2i+1)
        xr = x.float().reshape(*x.shape[:-1], -1, 2)
        cos, sin = self.cos[pos][None, :, None, :], self.sin[pos][None, :, None, :]
        a, b = xr[..., 0], xr[..., 1]
        return torch.stack((a * cos - b * sin, a * sin + b * cos), -1).flatten(-2)

    def forward(self, tokens, start=0, cache=None):
        return self.hidden(tokens, start, cache) @ self.emb.t()

    def hidden(self, tokens, start=0, cache=None):  # the final RMSNorm's output [B, T, D]
        c = self.c
        B, T = tokens.shape
        H, KV, hd = c["heads"], c["kv_heads"], c["dim"] // c["heads"]
        pos = torch.arange(start, start + T)
        x = self.emb[tokens]
        for i, l in enumerate(self.layers):
            h = self.rms(x, l.att_norm)
            q = self.rope(l.wq(h).view(B, T, H, hd), pos)
            k = self.rope(l.wk(h).view(B, T, KV, hd), pos)
            v = l.wv(h).view(B, T, KV, hd)
            if cache is not None:
                if i in cache:
                    k = torch.cat((cache[i][0], k), 1)
                    v = torch.cat((cache[i][1], v), 1)
                cache[i] = (k, v)
            k = k.repeat_interleave(H // KV, 2)
            v = v.repeat_interleave(H // KV, 2)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, hd]
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
            if T > 1:  # causal mask (one new query with a cache sees every cached key; prefill starts at 0)
                scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
            att = torch.softmax(scores, -1) @ v
            x = x + l.wo(att.transpose(1, 2).reshape(B, T, -1))
            h = self.rms(x, l.ffn_norm)
            x = x + l.w2(F.silu(l.w1(h)) * l.w3(h))
        return self.rms(x, self.norm)

    def log_probs(self, tokens):
        logits = self.forward(tokens)[:, :-1]
        return torch.log_softmax(logits.float(), -1).gather(-1, tokens[:, 1:, None]).squeeze(-1)


def main():
    which, threads = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    c = TEN_MILLION if which == "10M" else read_config(sys.argv[3] if len(sys.argv) > 3 else "examples/data/stories260K.bin")
    model = Llama(c)
    params = sum(p.numel() for p in model.parameters())
    rows, cols = 8, min(256, c["seq"])
    n = rows * cols
    tokens = (torch.arange(n) * 7919 + 13).remainder(c["vocab"]).view(rows, cols)

    def train_step():
        model.zero_grad(set_to_none=False)
        model.log_probs(tokens).sum().backward()

    train_step()
    steps, t0 = 0, time.perf_counter()
    while steps < 3 or time.perf_counter() - t0 < 3.0:
        train_step()
        steps += 1
    train_tps = steps * n / (time.perf_counter() - t0)

    with torch.no_grad():
        fwd, t0 = 0, time.perf_counter()
        while fwd < 3 or time.perf_counter() - t0 < 2.0:
            model.log_probs(tokens)
            fwd += 1
        fwd_tps = fwd * n / (time.perf_counter() - t0)

        new_tokens = min(256, c["seq"])
        sampled, runs, t0 = 0, 0, time.perf_counter()
        while runs < 3 or time.perf_counter() - t0 < 2.0:
            cache, tok = {}, torch.tensor([[1]])
            for p in range(new_tokens):
                logits = model.forward(tok, start=p, cache=cache)[:, -1]
                tok = torch.multinomial(torch.softmax(logits, -1), 1)
                sampled += 1
            runs += 1
        sample_tps = sampled / (time.perf_counter() - t0)

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"| PyTorch {torch.__version__} eager | {which} | {params} | {threads} | {rows} x {cols} | "
          f"{train_tps:.0f} | {fwd_tps:.0f} | {sample_tps:.0f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
