"""Run by tests/test_ddp.py: a 2-process CPU DDP fit with ApproximateDropout; each rank saves what it saw."""

import sys

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_ard import ApproximateDropout


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, 40), nn.ReLU(), nn.Dropout(0.5), nn.Linear(40, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Record(pl.Callback):
    def __init__(self, ard: ApproximateDropout) -> None:
        self.ard, self.kept = ard, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        pats = self.ard.controller.patterns["net.2"]
        self.kept.append([p.kept.tolist() for p in pats] if isinstance(pats, tuple) else pats.kept.tolist())


def main(out: str, groups: int = 1) -> None:
    pl.seed_everything(0)
    g = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(64, 12, generator=g), torch.randint(0, 3, (64,), generator=g)), 8)
    ard = ApproximateDropout(measure_speedup=False, verbose=False, groups=groups)
    rec = Record(ard)
    trainer = pl.Trainer(
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        max_steps=6,
        callbacks=[ard, rec],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = Net()
    trainer.fit(model, data)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.save(
        {"kept": rec.kept, "params": flat, "types": [type(m).__name__ for m in model.net]},
        f"{out}/rank{trainer.global_rank}.pt",
    )
    if torch.distributed.is_initialized():  # tear gloo down before interpreter exit (its threads can abort it)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1)
