"""The SFT training step in transformers + PEFT, timed: the Python side of benches/sft.sh, the
counterpart of crates/train/examples/sft_step_bench.rs, on the batches benches/sft_make.py wrote.

A step: forward with labels (transformers' causal-LM loss, mean over target tokens), backward,
clip the gradient norm to 1, LoRA+ AdamW step (PEFT's create_loraplus_optimizer, lr 2e-4,
ratio 16), zero grad. LoRA r 8, alpha 16, dropout 0 on q_proj and v_proj (the models crate's
recommended Llama targets). Padded batches pass the attention mask; packed batches pass
position_ids and no mask (transformers then keeps attention inside each document).

usage: python benches/sft_step_ref.py DIR padded|packed [--steps N] [--warmup 2] [--threads N]
                                      [--device cpu|cuda] [--dtype f32|bf16]
(bf16: the base model in bf16, the adapters in f32, as loraplus does)
Prints one line of key=value fields, as the Rust side does.
"""
import argparse
import os
import time

import torch
from peft import LoraConfig, get_peft_model
from peft.optimizers import create_loraplus_optimizer
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("layout", choices=["padded", "packed"])
    ap.add_argument("--steps", type=int, default=0, help="0: every batch once")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    data = load_file(os.path.join(a.dir, f"{a.layout}.safetensors"))
    n = len([k for k in data if k.startswith("input_ids.")])
    batches = []
    for j in range(n):
        b = {"input_ids": data[f"input_ids.{j}"], "labels": data[f"labels.{j}"]}
        if a.layout == "padded":
            b["attention_mask"] = data[f"attention_mask.{j}"]
        else:
            b["position_ids"] = data[f"position_ids.{j}"]
        batches.append({k: v.to(dev) for k, v in b.items()})
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(os.path.join(a.dir, "model"), torch_dtype=dtype,
                                                 attn_implementation="sdpa").to(dev)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                             target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    for n_, p in model.named_parameters():
        if p.requires_grad:
            p.data = p.data.float()
    model.train()
    opt = create_loraplus_optimizer(model, optimizer_cls=torch.optim.AdamW, lr=2e-4, loraplus_lr_ratio=16.0)
    params = [p for p in model.parameters() if p.requires_grad]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step(b):
        loss = model(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=False)
        return loss.item()

    for j in range(a.warmup):
        step(batches[j % n])
    steps = a.steps or n
    real = total = 0
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    loss = 0.0
    for j in range(steps):
        b = batches[j % n]
        ids = b["input_ids"]
        total += ids.numel()
        real += int((ids != 0).sum())  # the pad id 0 is never a document token
        loss = step(b)
    sync()
    secs = time.perf_counter() - t0
    dev_mem = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else float("nan")
    print(f"impl=peft layout={a.layout} steps={steps} tokens={real} slots={total} "
          f"padding={1 - real / total:.4f} seconds={secs:.3f} tokens_per_s={real / secs:.1f} "
          f"last_loss={loss:.4f} peak_rss_mib={peak_rss_mib():.0f} peak_device_mib={dev_mem:.0f} "
          f"threads={a.threads} device={a.device} dtype={a.dtype}")


if __name__ == "__main__":
    main()
