"""One full LoRA+ training step of a sequence classifier (by default MiniLM) in transformers +
PEFT, timed: the Python side of `benches/run.sh` (CPU) and `benches/gpu_bench.sh` (CUDA, bf16),
the counterpart of `crates/train/examples/train_step_bench.rs`.

Same model, inputs (same generator calls on the same libtorch; padding = the config's
pad_token_id), LoRA config (r 8, alpha 16, dropout 0, the models crate's recommended modules:
query/value, GPT-2 c_attn, Llama q_proj/v_proj; the heads in modules_to_save), optimizer (PEFT's
create_loraplus_optimizer over torch.optim.AdamW, lr 2e-4, ratio 16), clipping (norm 1), thread
count, device and dtype (PEFT keeps the adapters in f32 on a bf16 model, as loraplus does).
Prints one line of key=value fields, as the Rust side does.

usage: python benches/step_ref.py [--batch 32] [--seq 128] [--steps 10] [--warmup 2]
                                  [--threads N] [--ratio 16] [--model DIR] [--device cpu|cuda]
                                  [--dtype f32|bf16|f16] [--peak] [--breakdown] [--quantize nf4]

--quantize nf4 (CUDA, needs bitsandbytes): QLoRA's base, the frozen linears in bitsandbytes NF4
(compute in --dtype, double quantization off), loaded through transformers'
BitsAndBytesConfig; the counterpart of the Rust side's --quantize int4 (benches/gpu_bench.sh).
"""
import argparse
import os
import time

import torch
from peft import LoraConfig, get_peft_model
from peft.optimizers import create_loraplus_optimizer
from transformers import AutoConfig, AutoModelForSequenceClassification
from transformers.utils import logging

LR = 2e-4
MAX_GRAD_NORM = 1.0


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}

# The models crate's recommended_lora_modules: (targets, modules_to_save) per model type.
LORA_MODULES = {
    "bert": (["query", "value"], ["classifier", "pooler.dense"]),
    "roberta": (["query", "value"], ["classifier"]),
    "gpt2": (["c_attn"], ["score"]),
    "llama": (["q_proj", "v_proj"], ["score"]),
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(size, device, dtype):
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(6):
        sync(device)
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        sync(device)
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
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="f32", choices=sorted(DTYPES))
    p.add_argument("--quantize", choices=["nf4"])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device, dtype = torch.device(a.device), DTYPES[a.dtype]
    if a.peak:
        peak = matmul_peak(a.peak_size, device, dtype)
        print(f"impl=torch matmul={a.peak_size} threads={a.threads} device={a.device} dtype={a.dtype} "
              f"peak_gflops={peak:.2f}")
        return

    logging.set_verbosity_error()
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(a.model)
    if a.quantize == "nf4":
        from transformers import BitsAndBytesConfig
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                                 bnb_4bit_use_double_quant=False)
        model = AutoModelForSequenceClassification.from_pretrained(
            a.model, num_labels=2, attn_implementation="sdpa", dtype=dtype, quantization_config=bnb,
            device_map={"": device})
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            a.model, num_labels=2, attn_implementation="sdpa", dtype=dtype).to(device)
    targets, heads = LORA_MODULES[config.model_type]
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets, modules_to_save=heads,
                     fan_in_fan_out=config.model_type == "gpt2")
    model = get_peft_model(model, cfg)
    model.train()
    opt = create_loraplus_optimizer(model=model, optimizer_cls=torch.optim.AdamW, lr=LR,
                                    loraplus_lr_ratio=a.ratio)
    params = [q for q in model.parameters() if q.requires_grad]

    torch.manual_seed(0)
    ids = torch.randint(1000, 20000, (a.batch, a.seq))
    lengths = torch.randint(a.seq // 2, a.seq + 1, (a.batch, 1))
    mask = (torch.arange(a.seq).unsqueeze(0) < lengths).long()
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    ids = (ids * mask + (1 - mask) * pad).to(device)
    mask = mask.to(device)
    labels = torch.randint(0, 2, (a.batch,)).to(device)
    rss_loaded = peak_rss_mib()

    times = []
    phases = []
    loss = None
    for i in range(a.warmup + a.steps):
        sync(device)
        t = time.perf_counter()
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        if a.breakdown:
            sync(device)
        t_fwd = time.perf_counter()
        out.loss.backward()
        if a.breakdown:
            sync(device)
        t_bwd = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        opt.step()
        opt.zero_grad()
        loss = out.loss.detach()
        sync(device)
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
    print(f"impl=torch model={config.model_type} device={a.device} dtype={a.dtype} "
          f"quantize={a.quantize or 'none'} batch={a.batch} seq={a.seq} threads={torch.get_num_threads()} steps={a.steps} "
          f"median_ms={median * 1e3:.2f} min_ms={times[0] * 1e3:.2f} samples_per_s={a.batch / median:.3f} "
          f"rss_loaded_mib={rss_loaded:.1f} peak_rss_mib={peak_rss_mib():.1f} last_loss={loss.item():.4f}{breakdown}")


if __name__ == "__main__":
    main()
