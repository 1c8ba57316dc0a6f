#!/usr/bin/env python3
"""The PyTorch side of benchmarks/ppo_iteration_bench.cpp: one full PPO iteration of the stories260K-shaped
Llama (llama_torch.Llama: same architecture and shapes), written the way the Python RLHF stacks run it
(eager PyTorch, autograd, TRL's reversed Python loop for GAE, log_softmax + gather for the log-probs):

    rollout: 32 prompts of 4 tokens, 24 sampled tokens each (temperature 1, KV cache, no stop token)
    learn:   old policy, reference and value passes, the reward model's score at the last token, k1
             KL-penalized rewards (beta 0.02), GAE (gamma 1, lambda 0.95) over the response, whitened
             advantages, then 4 epochs x 4 minibatches of 8 rows: a PPO-clip policy update (epsilon 0.2)
             and a clipped value-loss update (0.2), AdamW, global-norm clip 1.

Four networks of the stories260K shape: policy, reference, reward model (trunk + scalar head), value model
(trunk + scalar head). The weights are random (the timing does not depend on them: no row stops early).

Usage: ppo_torch.py <threads> [stories260K.bin]
Prints one markdown table row, like ppo_iteration_bench. Exits with code 77 when torch is missing.
"""
import copy
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import torch
except ImportError:
    print("ppo_torch.py: PyTorch is not installed (Debian: apt-get install python3-torch); skipped")
    sys.exit(77)
from llama_torch import Llama, read_config  # noqa: E402

BATCH, PROMPT, NEW, EPOCHS, MINIBATCHES = 32, 4, 24, 4, 4
BETA, GAMMA, LAM, CLIP, VALUE_CLIP = 0.02, 1.0, 0.95, 0.2, 0.2


class ScalarModel(torch.nn.Module):
    """A trunk with a scalar head: the reward model (score at the last token) and the value model."""

    def __init__(self, c):
        super().__init__()
        self.trunk = Llama(c)
        self.head = torch.nn.Linear(c["dim"], 1)

    def forward(self, tokens):
        return self.head(self.trunk.hidden(tokens)).squeeze(-1)  # [B, L]


def rollout(policy, prompts):
    with torch.no_grad():
        cache = {}
        logits = policy.forward(prompts, 0, cache)[:, -1]
        out, pos = [prompts], prompts.shape[1]
        for i in range(NEW):
            tok = torch.multinomial(torch.softmax(logits, -1), 1)
            out.append(tok)
            if i + 1 < NEW:
                logits = policy.forward(tok, pos, cache)[:, -1]
                pos += 1
        return torch.cat(out, 1)


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum()


def whiten(x, mask):
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask) * mask.sum() / (mask.sum() - 1)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def learn(policy, reference, rm, value, opt_p, opt_v, seq):
    B, L = seq.shape
    R = L - PROMPT  # response tokens: log-prob columns PROMPT-1 .. L-2 predict them
    with torch.no_grad():
        old_lp = policy.log_probs(seq)[:, PROMPT - 1:]
        ref_lp = reference.log_probs(seq)[:, PROMPT - 1:]
        old_v = value(seq)[:, PROMPT - 1:-1]  # the value of the state in which each response token is chosen
        score = rm(seq)[:, -1]
        rewards = -BETA * (old_lp - ref_lp)
        rewards[:, -1] += score
        lastgaelam, reversed_adv = 0, []
        for t in reversed(range(R)):  # TRL's loop
            next_v = old_v[:, t + 1] if t < R - 1 else 0.0
            delta = rewards[:, t] + GAMMA * next_v - old_v[:, t]
            lastgaelam = delta + GAMMA * LAM * lastgaelam
            reversed_adv.append(lastgaelam)
        adv = torch.stack(reversed_adv[::-1], 1)
        returns = adv + old_v
        mask = torch.ones_like(adv)
        adv = whiten(adv, mask)
    for _ in range(EPOCHS):
        for mb in torch.randperm(B).split(B // MINIBATCHES):
            m = mask[mb]
            lp = policy.log_probs(seq[mb])[:, PROMPT - 1:]
            ratio = torch.exp(lp - old_lp[mb])
            pg = torch.max(-adv[mb] * ratio, -adv[mb] * torch.clamp(ratio, 1 - CLIP, 1 + CLIP))
            loss = masked_mean(pg, m)
            opt_p.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            opt_p.step()
            v = value(seq[mb])[:, PROMPT - 1:-1]
            v_clipped = old_v[mb] + torch.clamp(v - old_v[mb], -VALUE_CLIP, VALUE_CLIP)
            v_loss = 0.5 * masked_mean(torch.max((v - returns[mb]) ** 2, (v_clipped - returns[mb]) ** 2), m)
            opt_v.zero_grad()
            v_loss.backward()
            torch.nn.utils.clip_grad_norm_(value.parameters(), 1.0)
            opt_v.step()


def main():
    threads = int(sys.argv[1])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    c = read_config(sys.argv[2] if len(sys.argv) > 2 else "examples/data/stories260K.bin")
    policy = Llama(c)
    reference = copy.deepcopy(policy).requires_grad_(False)
    rm = ScalarModel(c).requires_grad_(False)
    value = ScalarModel(c)
    opt_p = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    opt_v = torch.optim.AdamW(value.parameters(), lr=1e-5)
    r = torch.arange(BATCH)[:, None]
    j = torch.arange(1, PROMPT)[None, :]
    prompts = torch.cat((torch.ones(BATCH, 1, dtype=torch.long), (r * 7919 + j * 31 + 13) % c["vocab"]), 1)
    rollout_s, learn_s = [], []
    for it in range(4):  # iteration 0 warms up
        t0 = time.perf_counter()
        seq = rollout(policy, prompts)
        t1 = time.perf_counter()
        learn(policy, reference, rm, value, opt_p, opt_v, seq)
        t2 = time.perf_counter()
        assert seq.shape == (BATCH, PROMPT + NEW)
        if it > 0:
            rollout_s.append(t1 - t0)
            learn_s.append(t2 - t1)
    roll, lrn = sorted(rollout_s)[1], sorted(learn_s)[1]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"| PyTorch {torch.__version__} eager | {threads} | {BATCH} x ({PROMPT} + {NEW}) | {roll:.3f} | {lrn:.3f} | "
          f"{roll + lrn:.3f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
