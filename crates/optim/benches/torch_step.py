"""Time torch.optim.AdamW's step (foreach or fused) on the LoRA parameter sets of
crates/optim/src/shapes.rs, with the same two LoRA+ groups as the Rust side (A at lr,
B at lr * 16, weight decay 0.01). Used by side_by_side.sh.

Usage: python torch_step.py --set minilm|llama7b --impl foreach|fused [--steps N] [--warmup N] [--threads N]
Prints one line: `torch <set> <impl> <ms per step> ms/step ...`.
"""

import argparse
import statistics
import time

import torch


def shapes(name):
    if name == "minilm":
        return [(8, 384, 384)] * (6 * 2)
    if name == "llama7b":
        h, m = 4096, 11008
        per_layer = [(16, h, h)] * 4 + [(16, h, m)] * 2 + [(16, m, h)]
        return per_layer * 32
    raise SystemExit(f"--set {name}: expected minilm or llama7b")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", default="minilm")
    ap.add_argument("--impl", default="fused", choices=["foreach", "fused"])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    group_a, group_b = [], []
    for r, fin, fout in shapes(a.set):
        pa = torch.nn.Parameter(torch.randn(r, fin) * 0.02)
        pb = torch.nn.Parameter(torch.randn(fout, r) * 0.02)
        pa.grad = torch.randn_like(pa) * 1e-3
        pb.grad = torch.randn_like(pb) * 1e-3
        group_a.append(pa)
        group_b.append(pb)
    lr = 1e-4
    kw = {"foreach": True} if a.impl == "foreach" else {"fused": True}
    opt = torch.optim.AdamW(
        [
            {"params": group_a, "lr": lr, "weight_decay": 0.01},
            {"params": group_b, "lr": lr * 16, "weight_decay": 0.01},
        ],
        **kw,
    )
    for _ in range(max(1, a.warmup)):
        opt.step()
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        opt.step()
        times.append((time.perf_counter() - t) * 1e3)
    n = sum(p.numel() for p in group_a + group_b)
    print(
        f"torch {a.set} {a.impl} {statistics.median(times):.4f} ms/step "
        f"(mean {statistics.mean(times):.4f}, min {min(times):.4f}; {2 * len(group_a)} tensors, {n} elements, "
        f"{torch.get_num_threads()} threads)"
    )


if __name__ == "__main__":
    main()
