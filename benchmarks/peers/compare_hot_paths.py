#!/usr/bin/env python3
"""Ours and the peers' forms of every hot path, side by side in one run (the tables of docs/benchmarks.md).

1. Agreement: writes one set of inputs (PyTorch, fixed seed), runs hot_paths_check (ours, Eigen backend)
   on them and holds each output against the peers' form from hot_paths_torch.py: GAE advantages and
   returns, masked whitening, k1 KL-penalized rewards, PPO-clip and clipped value loss with their
   gradients, token log-probs and entropy, the ranking loss and its gradient. A disagreement fails the run.
2. Speed: runs hot_paths_bench (its Google Benchmark table, with GB/s and the triad, printed as it runs;
   JSON read back) and hot_paths_torch.measure() at the same shapes on 1 and 2 threads, and prints a ratio
   table: peer time / our time for each peer form.

Usage: /usr/bin/python3 benchmarks/peers/compare_hot_paths.py <hot_paths_bench> <hot_paths_check> [--quick]
  --quick: the agreement check and a short timing run (fewer repetitions, 512 logits rows).
  --agreement-only: the agreement check alone.
Without PyTorch (Debian: apt-get install python3-torch) it runs our benchmarks alone and says so.
"""
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# Our benchmark (template name in hot_paths_bench.cpp) -> the peers' forms of the same computation.
PEER_FORMS = {
    "gae": ["gae_trl_loop", "gae_verl_loop"],
    "whitening": ["masked_whiten"],
    "kl_rewards": ["kl_rewards_k1"],
    "ppo_clip_loss": ["ppo_clip_fwd_bwd"],
    "value_loss": ["value_clip_fwd_bwd"],
    "token_logprobs": ["logp_naive", "logp_trl_rows"],
    "token_entropy": ["entropy_full"],
    "token_logprobs_fwd_bwd": ["logp_naive_fwd_bwd", "logp_trl_rows_fwd_bwd"],
    "ranking_loss": ["ranking_k{k}"],
}


def run_ours(bench, quick):
    """Runs every benchmark of hot_paths_bench (its console table, with GB/s and the triad, goes to stdout)
    and returns the Eigen backend's figures: {(op, shape, threads): seconds}."""
    import re
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "ours.json")
        args = [bench, f"--benchmark_out={out}", "--benchmark_out_format=json"]
        if quick:
            args.append("--benchmark_min_time=0.05")
        subprocess.run(args, check=True, env=dict(os.environ, OMP_WAIT_POLICY="passive"))
        with open(out) as f:
            runs = json.load(f)["benchmarks"]
    figures = {}
    for b in runs:
        match = re.match(r"^([a-z_]+)<rlhf::eigen_backend>/([0-9/]+)", b["name"])  # e.g. gae<rlhf::eigen_backend>/64/512/1/real_time
        if not match:
            continue
        op, nums = match.group(1), [int(x) for x in match.group(2).split("/") if x]
        seconds = b["real_time"] * {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[b["time_unit"]]
        if op == "ranking_loss":
            k, threads = nums
            figures[(op, f"[64,{k}]", threads)] = seconds
        else:
            rows, cols, threads = nums
            figures[(op, f"[{rows},{cols}]", threads)] = seconds
    return figures


def agreement(check, torch, peers):
    """Runs hot_paths_check on one set of inputs and compares with the peers' forms; returns failures."""
    import numpy as np
    F = torch.nn.functional
    gen = torch.Generator().manual_seed(1)
    rows, cols, lrows, vocab, prompts = 64, 512, 256, 32000, 64
    m = peers.ragged_mask(rows, cols, gen)
    arrays = {
        "rewards": torch.randn(rows, cols, generator=gen), "values": torch.randn(rows, cols, generator=gen),
        "x": torch.randn(rows, cols, generator=gen) * 2 + 0.5,
        "logp": -torch.rand(rows, cols, generator=gen) * 2 - 1, "ref": -torch.rand(rows, cols, generator=gen) * 2 - 1,
        "scores": torch.randn(rows, generator=gen), "old": -torch.rand(rows, cols, generator=gen) * 2 - 1,
        "adv": torch.randn(rows, cols, generator=gen), "old_v": torch.randn(rows, cols, generator=gen),
        "ret": torch.randn(rows, cols, generator=gen), "logits": torch.randn(lrows, vocab, generator=gen) * 4,
        "rank4": torch.randn(prompts, 4, generator=gen), "rank9": torch.randn(prompts, 9, generator=gen),
    }
    tokens = torch.randint(0, vocab, (lrows,), generator=gen)
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "shapes.txt"), "w") as f:
            f.write(f"{rows} {cols} {lrows} {vocab} {prompts} 4 9\n")
        for name, t in arrays.items():
            t.numpy().astype(np.float32).tofile(os.path.join(d, name + ".f32"))
        tokens.numpy().astype(np.int32).tofile(os.path.join(d, "tokens.i32"))
        m.numpy().astype(np.uint8).tofile(os.path.join(d, "mask.u8"))
        subprocess.run([check, d], check=True, capture_output=True, text=True)

        def ours(name, shape):
            return torch.from_numpy(np.fromfile(os.path.join(d, name + ".f32"), dtype=np.float32).reshape(shape))

        a = arrays
        checks = []  # (what, ours, theirs, where) compared on `where` (None: everywhere)
        adv, ret = peers.gae_trl_loop(a["rewards"], a["values"], m)
        checks += [("GAE advantages", ours("gae_adv", (rows, cols)), adv, m),
                   ("GAE returns", ours("gae_ret", (rows, cols)), ret, m)]
        checks.append(("masked whitening", ours("whiten", (rows, cols)), peers.masked_whiten(a["x"], m), m))
        checks.append(("KL-penalized rewards (k1)", ours("kl_rewards", (rows, cols)),
                       peers.kl_rewards_k1(a["logp"], a["ref"], a["scores"], m.clone()), None))
        x = a["logp"].clone().requires_grad_(True)
        loss, _, _ = peers.ppo_clip(x, a["old"], a["adv"], m)
        loss.backward()
        checks += [("PPO-clip loss", ours("ppo_loss", (1,)), loss.detach().reshape(1), None),
                   ("PPO-clip gradient", ours("ppo_grad", (rows, cols)), x.grad, None)]
        v = a["values"].clone().requires_grad_(True)
        vloss = peers.value_clip(v, a["old_v"], a["ret"], m)
        vloss.backward()
        checks += [("clipped value loss", ours("value_loss", (1,)), vloss.detach().reshape(1), None),
                   ("clipped value loss gradient", ours("value_grad", (rows, cols)), v.grad, None)]
        checks += [("token log-probs", ours("logp_ours", (lrows,)), peers.logp_naive(a["logits"], tokens), None),
                   ("token entropy", ours("entropy_ours", (lrows,)), peers.entropy_full(a["logits"]), None)]
        z = a["logits"].clone().requires_grad_(True)
        peers.logp_naive(z, tokens).sum().backward()
        checks.append(("token log-probs gradient (d logits)", ours("dlogits_ours", (lrows, vocab)), z.grad, None))
        for k in (4, 9):
            r = a[f"rank{k}"].clone().requires_grad_(True)
            rl = peers.ranking_all_pairs(r, k)
            rl.backward()
            checks += [(f"ranking loss K={k}", ours(f"ranking{k}_loss", (1,)), rl.detach().reshape(1), None),
                       (f"ranking gradient K={k}", ours(f"ranking{k}_grad", (prompts, k)), r.grad, None)]
    failures = 0
    print("| hot path | largest difference (ours - peers) | agree |")
    print("|---|---|---|")
    for what, mine, theirs, where in checks:
        if where is not None:
            mine, theirs = mine * where, theirs * where
        diff = float((mine - theirs).abs().max())
        ok = bool(torch.allclose(mine, theirs, rtol=1e-4, atol=2e-5))
        failures += 0 if ok else 1
        print(f"| {what} | {diff:.2e} | {'yes' if ok else 'NO'} |")
    return failures


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    bench, check, quick = sys.argv[1], sys.argv[2], "--quick" in sys.argv
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None:
        print("compare_hot_paths.py: PyTorch is not installed (Debian: apt-get install python3-torch); "
              "running our benchmarks alone")
        subprocess.run([bench], check=True, env=dict(os.environ, OMP_WAIT_POLICY="passive"))
        return 0
    import hot_paths_torch as peers
    print(f"Agreement (ours: Eigen backend, float; peers: PyTorch {torch.__version__}, float):\n")
    failures = agreement(check, torch, peers)
    if failures:
        print(f"\ncompare_hot_paths.py: {failures} hot path(s) disagree with the peers' forms")
        return 1
    if "--agreement-only" in sys.argv:
        return 0
    print("\nTiming ours (hot_paths_bench) ...", flush=True)
    mine = run_ours(bench, quick)
    print("Timing the peers' forms (hot_paths_torch.py) ...", flush=True)
    theirs = {(op, shape, threads): med for op, shape, threads, med, _ in peers.measure(quick, verbose=False)}
    print("\n| hot path | shape | threads | rlhf | peer form | peer | peer / rlhf |")
    print("|---|---|---|---|---|---|---|")
    for (op, shape, threads), seconds in sorted(mine.items()):
        forms = PEER_FORMS.get(op, [])
        if op == "ranking_loss":
            forms = [f.format(k=shape.split(",")[1].rstrip("]")) for f in forms]
        for form in forms:
            peer = theirs.get((form, shape, threads))
            if peer is None:
                continue
            print(f"| {op} | {shape} | {threads} | {seconds * 1e6:.1f} µs | {form} | {peer * 1e6:.1f} µs | "
                  f"**{peer / seconds:.1f}×** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
