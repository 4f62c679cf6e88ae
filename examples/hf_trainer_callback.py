"""A Hugging Face Trainer run watched by deepdoctor: a tiny GPT-2 built from a config (no
download) on random tokens; no compute_loss override, the callback reads the model's loss."""

import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from deepdoctor.integrations.transformers import DeepDoctorCallback

torch.set_num_threads(1)
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2))
ids = torch.randint(0, 64, (64, 16))
rows = [{"input_ids": row, "labels": row} for row in ids]  # labels: the model shifts them

out = sys.argv[1] if len(sys.argv) > 1 else "deepdoctor-out/hf"
doctor = DeepDoctorCallback(report_dir=out)
args = TrainingArguments(
    output_dir=out, max_steps=20, per_device_train_batch_size=8, learning_rate=1e-3,
    report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
)  # fmt: skip
Trainer(model=model, args=args, train_dataset=rows, callbacks=[doctor]).train()
print("layers:", doctor.trace.layers[:3], "...")
for f in doctor.findings:
    print(f.severity, f.kind, f.summary)
