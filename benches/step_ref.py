"""One full LoRA+ training step of MiniLM in transformers + PEFT, timed: the Python side of
`benches/run.sh`, the counterpart of `crates/train/examples/train_step_bench.rs`.

Same model, inputs (same generator calls on the same libtorch), LoRA config (r 8, alpha 16,
dropout 0, query/value, pooler + classifier in modules_to_save), optimizer (PEFT's
create_loraplus_optimizer over torch.optim.AdamW, lr 2e-4, ratio 16), clipping (norm 1) and
thread count. Prints one line of key=value fields, as the Rust side does.

usage: python benches/step_ref.py [--batch 32] [--seq 128] [--steps 10] [--warmup 2]
                                  [--threads N] [--ratio 16] [--model DIR] [--peak] [--breakdown]
"""
import argparse
import os
import time

import torch
from peft import LoraConfig, get_peft_model
from peft.optimizers import create_loraplus_optimizer
from transformers import BertForSequenceClassification
from transformers.utils import logging

LR = 2e-4
MAX_GRAD_NORM = 1.0


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def matmul_peak(size):
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    out = torch.empty(size, size)
    best = float("inf")
    for _ in range(6):
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def main():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--ratio", type=float, default=16.0)
    p.add_argument("--model", default=os.environ.get("LORAPLUS_MODEL_DIR", os.path.join(repo, ".venv/minilm")))
    p.add_argument("--peak", action="store_true")
    p.add_argument("--peak-size", type=int, default=2048)
    p.add_argument("--breakdown", action="store_true", help="also time forward, backward and optimizer")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.peak:
        print(f"impl=torch matmul={a.peak_size} threads={a.threads} peak_gflops={matmul_peak(a.peak_size):.2f}")
        return

    logging.set_verbosity_error()
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(a.model, num_labels=2, attn_implementation="sdpa")
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"],
                     modules_to_save=["classifier", "pooler.dense"])
    model = get_peft_model(model, cfg)
    model.train()
    opt = create_loraplus_optimizer(model=model, optimizer_cls=torch.optim.AdamW, lr=LR,
                                    loraplus_lr_ratio=a.ratio)
    params = [q for q in model.parameters() if q.requires_grad]

    torch.manual_seed(0)
    ids = torch.randint(1000, 20000, (a.batch, a.seq))
    lengths = torch.randint(a.seq // 2, a.seq + 1, (a.batch, 1))
    mask = (torch.arange(a.seq).unsqueeze(0) < lengths).long()
    ids = ids * mask
    labels = torch.randint(0, 2, (a.batch,))
    rss_loaded = peak_rss_mib()

    times = []
    phases = []
    loss = None
    for i in range(a.warmup + a.steps):
        t = time.perf_counter()
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        t_fwd = time.perf_counter()
        out.loss.backward()
        t_bwd = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        opt.step()
        opt.zero_grad()
        loss = out.loss.detach()
        if i >= a.warmup:
            end = time.perf_counter()
            times.append(end - t)
            phases.append((t_fwd - t, t_bwd - t_fwd, end - t_bwd))
    times.sort()
    breakdown = ""
    if a.breakdown:
        med = [sorted(p[k] for p in phases)[len(phases) // 2] * 1e3 for k in range(3)]
        breakdown = f" forward_ms={med[0]:.2f} backward_ms={med[1]:.2f} optimizer_ms={med[2]:.3f}"
    median = times[len(times) // 2]
    print(f"impl=torch batch={a.batch} seq={a.seq} threads={torch.get_num_threads()} steps={a.steps} "
          f"median_ms={median * 1e3:.2f} min_ms={times[0] * 1e3:.2f} samples_per_s={a.batch / median:.3f} "
          f"rss_loaded_mib={rss_loaded:.1f} peak_rss_mib={peak_rss_mib():.1f} last_loss={loss.item():.4f}{breakdown}")


if __name__ == "__main__":
    main()
