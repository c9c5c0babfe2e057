"""Table of the LSTM ablation runs (which sites use ARD, learning rate, clipping) from their run folders.

Runs (C="experiment=lstm_ptb ard.p=0.5 seed=0 trainer.max_epochs=4", A=multirun/ablation_lstm):

    python -m lightning_ard.app.train $C ard=row 'ard.include=[drop_out]' hydra.run.dir=$A/decoder_only
    python -m lightning_ard.app.train $C ard=row 'ard.exclude=[drop_out]' hydra.run.dir=$A/lstm_sites_only
    python -m lightning_ard.app.train -m $C ard=dropout,row trainer.gradient_clip_val=null hydra.sweep.dir=$A/noclip
    python -m lightning_ard.app.train -m $C ard=dropout,row model.lr=0.5 hydra.sweep.dir=$A/lr0.5

    python docs/results/lstm_ablation.py multirun/ablation_lstm multirun/accuracy_lstm > docs/results/lstm_ablation.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import OmegaConf


def describe(run: Path) -> tuple[str, ...] | None:
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    if float(cfg.ard.p) != 0.5 or not (run / "metrics.json").exists():
        return None
    metrics = json.loads((run / "metrics.json").read_text())
    enabled = bool(cfg.ard.get("enabled", True))
    family = cfg.ard.pattern if enabled else "nn.Dropout"
    sites = "all"
    if enabled and cfg.ard.get("include"):
        sites = "only " + ",".join(cfg.ard.include)
    elif enabled and cfg.ard.get("exclude"):
        sites = "all but " + ",".join(cfg.ard.exclude)
    clip = cfg.trainer.get("gradient_clip_val")
    return (family, sites if enabled else "", str(cfg.model.lr), "none" if clip is None else str(clip),
            f"{metrics['train/ppl']:.1f}", f"{metrics['test/ppl']:.1f}")  # fmt: skip


def main(roots: list[str]) -> None:
    rows = []
    for root in roots:
        for cfg in sorted(Path(root).rglob(".hydra/config.yaml")):
            row = describe(cfg.parent.parent)
            if row is not None and (row[0] in ("row", "nn.Dropout")):
                rows.append(row)
    print("| family | ARD sites | lr | clip | train ppl | test ppl |")
    print("|---|---|---|---|---|---|")
    for row in sorted(set(rows), key=lambda r: (r[3], r[2], r[0] != "nn.Dropout", r[1])):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
