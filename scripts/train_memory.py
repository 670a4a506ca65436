"""Peak memory of MemVP training steps on SmolLM2-135M (README, "Precision and memory").

Usage: python scripts/train_memory.py PRECISION MODEL_DTYPE GRAD_CKPT, e.g. bf16 bfloat16 1.
Linux only: reads VmRSS / VmHWM from /proc/self/status after resetting VmHWM via /proc/self/clear_refs.
"""
import json, sys, time
import torch
from accelerate import Accelerator
from memvp import MemVPConfig, get_memvp_model
from memvp.pretrained import load_language_model

precision, model_dtype, ckpt = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
B, L, N_VIS, VIS_DIM, ANSWER = 16, 64, 49, 1280, 4

def status(key):  # MiB
    return next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith(key + ":"))

torch.manual_seed(0)
torch.set_num_threads(2)
lm, _ = load_language_model("smollm2", dtype=getattr(torch, model_dtype))
model = get_memvp_model(lm, MemVPConfig(visual_dim=VIS_DIM))
for p in model.parameters():  # fp32 master weights, as memvp train does
    if p.requires_grad:
        p.data = p.data.float()
if ckpt:
    model.gradient_checkpointing_enable()
accelerator = Accelerator(mixed_precision=precision)
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
model, optimizer = accelerator.prepare(model, optimizer)
g = torch.Generator().manual_seed(0)
ids = torch.randint(0, lm.config.vocab_size, (B, L), generator=g)
labels = torch.full_like(ids, -100)
labels[:, -ANSWER:] = ids[:, -ANSWER:]
batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
         "visual_features": torch.randn(B, N_VIS, VIS_DIM, generator=g), "has_image": torch.ones(B, dtype=torch.bool)}
model.train()
with torch.no_grad():  # page in the memory-mapped weights
    sum(float(t.float().sum()) for t in [*model.parameters(), *model.buffers()])

def step():
    loss = model(**batch, answer_logits_only=True).loss
    accelerator.backward(loss)
    optimizer.step()
    optimizer.zero_grad()

open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
setup, t = status("VmRSS"), time.perf_counter()
for _ in range(2):
    step()
print(json.dumps({"setup_rss_mib": round(setup), "peak_rss_mib": round(status("VmHWM")),
                  "s_per_step": round((time.perf_counter() - t) / 2, 2)}))
