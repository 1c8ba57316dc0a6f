#!/usr/bin/env python3
"""The peers' side of benchmarks/hot_paths_bench.cpp: each hot path written the way the Python RLHF
stacks write it (eager PyTorch on the CPU, autograd for the backward), timed at the same shapes with
torch.set_num_threads(n) for n = 1 and 2.

The formulations follow the design notes (../shared/design/perf-baselines.md section 2 and
rlhf-math.md); none of the peers' code is used:

    gae_trl_loop       reversed Python loop over timesteps on [B] columns, list + stack
                       (TRL / OpenRLHF / DeepSpeed-Chat / trlx)
    gae_verl_loop      the same loop with verl's mask blends (carry the last valid value and advantage)
    masked_whiten      masked mean, Bessel-corrected masked variance, rsqrt
    logp_naive         log_softmax over the vocabulary + gather (DeepSpeed-Chat)
    logp_trl_rows      TRL's selective log-softmax on 2-D input: per-row logsumexp loop
    entropy_full       full softmax entropy, -(p * log p).sum(-1) (TRL per micro-batch)
    logp_*_fwd_bwd     the two log-prob forms with autograd's backward of their sum (d logits)
    kl_rewards_k1      -beta (logp - ref_logp), score added at the last valid token
    ppo_clip_fwd_bwd   PPO clipped surrogate, masked token mean, statistics under no_grad, backward
    ppo_value_fwd_bwd  the same plus the clipped value loss (vf_coef 0.1), TRL-shaped
    value_clip_fwd_bwd clipped value loss alone, masked token mean, backward
    ranking_k{4,9}     pairwise -logsigmoid over all C(K, 2) pairs of 64 prompts, backward

Usage: /usr/bin/python3 benchmarks/peers/hot_paths_torch.py [--quick]
Prints one line per op and thread count: op, shape, threads, median and min wall time. The driver
compare_hot_paths.py imports it (measure(), and the forms themselves for the agreement check).
Prints a message and exits with code 0 when PyTorch is missing (Debian: apt-get install python3-torch),
so that the benchmark run target of benchmarks/CMakeLists.txt still succeeds.
"""
import statistics
import sys
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    print("hot_paths_torch.py: PyTorch is not installed (Debian: apt-get install python3-torch); skipped")
    sys.exit(0)


def ragged_mask(rows, cols, gen):
    """Right-padded mask: each row holds between cols/2 and cols valid tokens."""
    lengths = torch.randint(cols // 2, cols + 1, (rows,), generator=gen)
    return (torch.arange(cols)[None, :] < lengths[:, None]).float()


def timed(fn, repeats):
    """Median and minimum wall time in seconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


# --- GAE (gamma 1, lambda 0.95) -------------------------------------------------------------------

def gae_trl_loop(rewards, values, mask, gamma=1.0, lam=0.95):
    values = values * mask
    rewards = rewards * mask
    last = 0
    out = []
    T = rewards.shape[1]
    for t in reversed(range(T)):
        next_v = values[:, t + 1] if t < T - 1 else 0.0
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * last
        out.append(last)
    adv = torch.stack(out[::-1], dim=1)
    return adv, adv + values


def gae_verl_loop(rewards, values, mask, gamma=1.0, lam=0.95):
    next_v = torch.zeros(rewards.shape[0])
    last = torch.zeros(rewards.shape[0])
    out = []
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        new_last = delta + gamma * lam * last
        next_v = values[:, t] * m + (1 - m) * next_v
        last = new_last * m + (1 - m) * last
        out.append(last)
    adv = torch.stack(out[::-1], dim=1)
    return adv, adv + values


def masked_whiten(x, mask, eps=1e-8):
    n = mask.sum()
    mean = (x * mask).sum() / n
    var = ((x - mean) ** 2 * mask).sum() / (n - 1)
    return (x - mean) * torch.rsqrt(var + eps)


# --- token log-probs and entropy ------------------------------------------------------------------

def logp_naive(logits, tokens):
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)


def logp_trl_rows(logits, tokens):
    picked = logits.gather(-1, tokens[:, None]).squeeze(-1)
    lse = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
    return picked - lse


def entropy_full(logits):
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


# --- rewards and losses ---------------------------------------------------------------------------

def kl_rewards_k1(logp, ref_logp, scores, mask, beta=0.05):
    rewards = -beta * (logp - ref_logp) * mask
    last = (mask.sum(1) - 1).long()
    rewards[torch.arange(rewards.shape[0]), last] += scores
    return rewards


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum()


def ppo_clip(logp, old_logp, adv, mask, eps=0.2):
    ratio = torch.exp(logp - old_logp)
    loss = masked_mean(torch.max(-adv * ratio, -adv * torch.clamp(ratio, 1 - eps, 1 + eps)), mask)
    with torch.no_grad():
        clip_frac = masked_mean((-adv * torch.clamp(ratio, 1 - eps, 1 + eps) > -adv * ratio).float(), mask)
        approx_kl = masked_mean(0.5 * (logp - old_logp) ** 2, mask)
    return loss, clip_frac, approx_kl


def value_clip(values, old_values, returns, mask, eps_v=0.2):
    clipped = old_values + torch.clamp(values - old_values, -eps_v, eps_v)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


def ranking_all_pairs(rewards, k):
    i, j = torch.triu_indices(k, k, offset=1)
    # Responses are listed best first: response i is better than response j for every i < j.
    return -F.logsigmoid(rewards[:, i] - rewards[:, j]).mean()


def measure(quick=False, verbose=True):
    """Times every form at every shape on 1 and 2 threads; returns [(op, shape, threads, median s, min s)]."""
    gen = torch.Generator().manual_seed(0)
    rows_logp, vocab = (512, 32000) if quick else (4096, 32000)
    shapes_2d = [(64, 512), (256, 1024)]
    results = []

    for threads in (1, 2):
        torch.set_num_threads(threads)

        def run(op, shape, fn, repeats):
            med, best = timed(fn, repeats)
            results.append((op, shape, threads, med, best))
            if verbose:
                print(f"{op:20s} {shape:>16s}  threads {threads}  median {med * 1e3:10.3f} ms  min {best * 1e3:10.3f} ms",
                      flush=True)

        for rows, cols in shapes_2d:
            r = torch.randn(rows, cols, generator=gen)
            v = torch.randn(rows, cols, generator=gen)
            m = ragged_mask(rows, cols, gen)
            shape = f"[{rows},{cols}]"
            run("gae_trl_loop", shape, lambda: gae_trl_loop(r, v, m), 5)
            run("gae_verl_loop", shape, lambda: gae_verl_loop(r, v, m), 5)
            run("masked_whiten", shape, lambda: masked_whiten(r, m), 21)

            lp = -torch.rand(rows, cols, generator=gen) * 2 - 1
            ref = -torch.rand(rows, cols, generator=gen) * 2 - 1
            scores = torch.randn(rows, generator=gen)
            run("kl_rewards_k1", shape, lambda: kl_rewards_k1(lp, ref, scores, m), 21)

            old = -torch.rand(rows, cols, generator=gen) * 2 - 1
            adv = torch.randn(rows, cols, generator=gen)
            old_v = torch.randn(rows, cols, generator=gen)
            ret = torch.randn(rows, cols, generator=gen)

            def ppo_fwd_bwd():
                x = lp.clone().requires_grad_(True)
                loss, _, _ = ppo_clip(x, old, adv, m)
                loss.backward()

            def ppo_value_fwd_bwd():
                x = lp.clone().requires_grad_(True)
                val = v.clone().requires_grad_(True)
                loss, _, _ = ppo_clip(x, old, adv, m)
                (loss + 0.1 * value_clip(val, old_v, ret, m)).backward()

            def value_fwd_bwd():
                val = v.clone().requires_grad_(True)
                value_clip(val, old_v, ret, m).backward()

            run("ppo_clip_fwd_bwd", shape, ppo_fwd_bwd, 21)
            run("ppo_value_fwd_bwd", shape, ppo_value_fwd_bwd, 21)
            run("value_clip_fwd_bwd", shape, value_fwd_bwd, 21)

        for k in (4, 9):
            rw = torch.randn(64, k, generator=gen)

            def rank_fwd_bwd():
                x = rw.clone().requires_grad_(True)
                ranking_all_pairs(x, k).backward()

            run(f"ranking_k{k}", f"[64,{k}]", rank_fwd_bwd, 51)

        logits = torch.randn(rows_logp, vocab, generator=gen) * 4
        tokens = torch.randint(0, vocab, (rows_logp,), generator=gen)
        shape = f"[{rows_logp},{vocab}]"
        want = logp_naive(logits, tokens)
        assert torch.allclose(logp_trl_rows(logits, tokens), want, atol=1e-4)
        run("logp_naive", shape, lambda: logp_naive(logits, tokens), 3)
        run("logp_trl_rows", shape, lambda: logp_trl_rows(logits, tokens), 3)
        run("entropy_full", shape, lambda: entropy_full(logits), 3)

        def logp_fwd_bwd(form):
            x = logits.detach().requires_grad_(True)
            form(x, tokens).sum().backward()

        run("logp_naive_fwd_bwd", shape, lambda: logp_fwd_bwd(logp_naive), 3)
        run("logp_trl_rows_fwd_bwd", shape, lambda: logp_fwd_bwd(logp_trl_rows), 3)
        del logits
    return results


def main():
    measure(quick="--quick" in sys.argv)


if __name__ == "__main__":
    main()
