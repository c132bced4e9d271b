"""Reference outputs for loraplus-optim's parity tests (crates/optim/tests/parity.rs).

Usage: python loraplus_ref.py CASE_DIR [CASE_DIR ...]

Each CASE_DIR holds a `case.json` written by the Rust test; its "kind" says what to compute:

- "train": build the toy model below, wrap it with PEFT (`get_peft_model`), load the base
  weights (`base.safetensors`) and the initial trainable weights (`init.safetensors`, keyed by
  loraplus names), and train it with `peft.optimizers.create_loraplus_optimizer` over
  `torch.optim.AdamW`, a transformers schedule and optional `clip_grad_norm_`, on the batches
  of `batches.safetensors`. Writes `out.safetensors` (trained weights, loraplus names),
  `groups.json` (loraplus name -> PEFT group) and `log.json` (per-step lrs and grad norms).
- "schedules": the learning rates transformers' schedulers give, step by step
  (`schedules.json`).
- "clip": `torch.nn.utils.clip_grad_norm_` on the gradients of `grads.safetensors`
  (`clipped.safetensors`, `clip.json`).
"""

import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from peft.optimizers import create_loraplus_optimizer
from safetensors.torch import load_file, save_file
from transformers import (
    get_constant_schedule,
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

GROUP_NAMES = ["groupA", "embedding", "groupB", "groupB_no_decay"]  # create_loraplus_optimizer's order


class Toy(torch.nn.Module):
    """emb -> l1 -> tanh -> l2 -> ln -> mean over tokens -> head (the Rust test's `Toy`)."""

    def __init__(self, vocab, dim, hidden, classes):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim, padding_idx=0)
        self.l1 = torch.nn.Linear(dim, hidden)
        self.l2 = torch.nn.Linear(hidden, dim)
        self.ln = torch.nn.LayerNorm(dim, eps=1e-5)
        self.head = torch.nn.Linear(dim, classes)

    def forward(self, ids):
        h = self.emb(ids)
        h = torch.tanh(self.l1(h))
        h = self.ln(self.l2(h))
        return self.head(h.mean(dim=1))


def loraplus_name(peft_name):
    """PEFT parameter name -> the name loraplus gives the same tensor."""
    n = peft_name.removeprefix("base_model.model.")
    for infix in (".default", ".base_layer", ".modules_to_save"):
        n = n.replace(infix, "")
    return n


def warmup_steps(w, total):
    # transformers TrainingArguments.get_warmup_steps: a value < 1 is a ratio, rounded up.
    if "ratio" in w:
        return math.ceil(total * w["ratio"])
    return w["steps"]


def make_schedule(opt, s):
    kind = s["kind"]
    if kind == "constant":
        return get_constant_schedule(opt)
    w = warmup_steps(s["warmup"], s["total_steps"])
    if kind == "constant_with_warmup":
        return get_constant_schedule_with_warmup(opt, w)
    if kind == "linear":
        return get_linear_schedule_with_warmup(opt, w, s["total_steps"])
    if kind == "cosine":
        return get_cosine_schedule_with_warmup(opt, w, s["total_steps"], num_cycles=s["num_cycles"])
    raise ValueError(kind)


def train(d, case):
    torch.manual_seed(0)
    m = case["model"]
    model = Toy(m["vocab"], m["dim"], m["hidden"], m["classes"])
    model.load_state_dict(load_file(d / "base.safetensors"))
    cfg = LoraConfig(
        r=m["r"],
        lora_alpha=m["alpha"],
        target_modules=m["targets"],
        bias=m["bias"],
        modules_to_save=m["modules_to_save"],
        lora_dropout=0.0,
        init_lora_weights=False,
    )
    model = get_peft_model(model, cfg)
    init = load_file(d / "init.safetensors")
    trainable = {loraplus_name(n): p for n, p in model.named_parameters() if p.requires_grad}
    if set(trainable) != set(init):
        raise SystemExit(f"trainable sets differ: peft {sorted(trainable)} vs loraplus {sorted(init)}")
    with torch.no_grad():
        for n, p in trainable.items():
            p.copy_(init[n])

    o = case["optim"]
    opt = create_loraplus_optimizer(
        model,
        torch.optim.AdamW,
        lr=o["lr"],
        loraplus_lr_ratio=o["ratio"],
        loraplus_lr_embedding=o["lr_embedding"],
        loraplus_weight_decay=o["weight_decay"],
        betas=tuple(o["betas"]),
        eps=o["eps"],
        amsgrad=o["amsgrad"],
    )
    groups = {}
    ids_of = {id(p): n for n, p in trainable.items()}
    for gname, g in zip(GROUP_NAMES, opt.param_groups, strict=True):
        for p in g["params"]:
            groups[ids_of[id(p)]] = gname
    sched = make_schedule(opt, case["schedule"])

    batches = load_file(d / "batches.safetensors")
    log = {"lrs": [], "grad_norms": [], "losses": []}
    params = [p for p in model.parameters() if p.requires_grad]
    for step in range(case["steps"]):
        ids, y = batches[f"ids.{step}"], batches[f"y.{step}"]
        loss = F.mse_loss(model(ids), y)
        loss.backward()
        if case["max_norm"] is not None:
            log["grad_norms"].append(torch.nn.utils.clip_grad_norm_(params, case["max_norm"]).item())
        log["lrs"].append([g["lr"] for g in opt.param_groups])
        log["losses"].append(loss.item())
        opt.step()
        sched.step()
        opt.zero_grad()

    save_file({n: p.detach().contiguous() for n, p in trainable.items()}, d / "out.safetensors")
    (d / "groups.json").write_text(json.dumps(groups, indent=1))
    (d / "log.json").write_text(json.dumps(log))


def schedules(d, case):
    out = []
    for s in case["schedules"]:
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.AdamW([p], lr=case["base_lr"])
        sched = make_schedule(opt, s)
        lrs = []
        for _ in range(case["steps"]):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        out.append(lrs)
    (d / "schedules.json").write_text(json.dumps(out))


def clip(d, case):
    grads = load_file(d / "grads.safetensors")
    names = sorted(grads)
    params = []
    for n in names:
        p = torch.nn.Parameter(torch.zeros_like(grads[n]))
        p.grad = grads[n].clone()
        params.append(p)
    norm = torch.nn.utils.clip_grad_norm_(params, case["max_norm"])
    save_file({n: p.grad for n, p in zip(names, params)}, d / "clipped.safetensors")
    (d / "clip.json").write_text(json.dumps({"norm": norm.item()}))


def main():
    torch.set_num_threads(1)
    for arg in sys.argv[1:]:
        d = Path(arg)
        case = json.loads((d / "case.json").read_text())
        {"train": train, "schedules": schedules, "clip": clip}[case["kind"]](d, case)


if __name__ == "__main__":
    main()
