"""A Lightning fit watched by deepdoctor: add the callback, read the findings after fit."""

import sys

import lightning.pytorch as L
import torch
from torch import nn

import deepdoctor as dd
from deepdoctor.integrations.lightning import DeepDoctorCallback

torch.set_num_threads(1)
X, y = dd.data.load("digits").train
loader = torch.utils.data.DataLoader(list(zip(X, y, strict=True)), batch_size=64, shuffle=True)


class Classifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        hidden = [m for _ in range(10) for m in (nn.Linear(32, 32), nn.Sigmoid())]
        self.net = nn.Sequential(nn.Linear(64, 32), nn.Sigmoid(), *hidden, nn.Linear(32, 10))

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        x, t = batch
        return nn.functional.cross_entropy(self.net(x), t)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


out = sys.argv[1] if len(sys.argv) > 1 else "deepdoctor-out/lightning"
doctor = DeepDoctorCallback(report_dir=out)  # report.html there at fit end
trainer = L.Trainer(max_steps=60, callbacks=[doctor], logger=False, enable_checkpointing=False)
trainer.fit(Classifier(), loader)
for f in doctor.findings:
    print(f.severity, f.kind, f.summary)
