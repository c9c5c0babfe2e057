"""Hydra entry point: ``python -m lightning_ard.app.train [overrides]`` (console script ``ard-train``).

One run seeds everything, builds the DataModule, the model, the callbacks (step timer, ARD unless
``ard.enabled=false``, then the configured ones), the loggers and the Trainer from the composed config, fits,
tests, prints the final metrics and the TensorBoard directory, writes ``metrics.json`` into the run directory and
returns the monitored metric (``optimized_metric``) for sweepers (``-m``, Optuna). See ``conf/config.yaml``.

Config errors (unknown keys or options) fail in Hydra before anything is built; objects are built callbacks first,
so a bad ``ard.p`` fails with the callback's message before any data is read.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    import lightning as L
    from lightning.pytorch.loggers import Logger

ARD_APP_KEYS = ("enabled",)
"""Keys of the ``ard`` config node that the app reads; all others are ApproximateDropout arguments."""


def ard_enabled(cfg: DictConfig) -> bool:
    """Whether the run uses the ARD callback (``ard.enabled``, true unless set otherwise)."""
    return bool(cfg.get("ard") is not None and cfg.ard.get("enabled", True))


def instantiate_ard(ard_cfg: DictConfig) -> L.Callback:
    """The ``ApproximateDropout`` callback of an ``ard`` config node (its app-only keys removed)."""
    node = OmegaConf.to_container(ard_cfg, resolve=True)  # resolve first: ${seed} points outside the node
    assert isinstance(node, dict)
    for key in ARD_APP_KEYS:
        node.pop(key, None)
    if node.get("plan") is not None:  # a replay: the settings come from the plan, only the callback's options stay
        from lightning_ard import ARDConfig

        for key in (*ARDConfig.names(), "search"):
            node.pop(key, None)
    return hydra.utils.instantiate(node)


def instantiate_dict(node: DictConfig | None, what: str) -> list[Any]:
    """Instantiate every entry of a name -> config mapping (callbacks, loggers) that has a ``_target_``."""
    if not node:
        return []
    if not isinstance(node, DictConfig):
        raise TypeError(f"{what} config must be a mapping of name -> config, got {type(node).__name__}")
    return [
        hydra.utils.instantiate(conf) for conf in node.values() if isinstance(conf, DictConfig) and "_target_" in conf
    ]


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """Step timer first (its start hook must run before the others), then ARD, then ``cfg.callbacks``."""
    from lightning_ard.app.step_timer import StepTimer

    callbacks: list[L.Callback] = [StepTimer(warmup_steps=int(cfg.get("timing", {}).get("warmup_steps", 5)))]
    if ard_enabled(cfg):
        callbacks.append(instantiate_ard(cfg.ard))
    callbacks.extend(instantiate_dict(cfg.get("callbacks"), "callbacks"))
    return callbacks


def build_model(cfg: DictConfig, datamodule: L.LightningDataModule) -> L.LightningModule:
    """The model; ``model.vocab_size: null`` is filled from the DataModule's vocabulary (language models)."""
    extra: dict[str, Any] = {}
    if "vocab_size" in cfg.model and cfg.model.vocab_size is None:
        if not hasattr(datamodule, "vocab_size"):
            raise ValueError(
                f"model.vocab_size is null but the DataModule {type(datamodule).__name__} has no vocabulary; "
                f"set model.vocab_size=<n> or use data=ptb"
            )
        datamodule.prepare_data()
        datamodule.setup("fit")
        extra["vocab_size"] = int(datamodule.vocab_size)
    return hydra.utils.instantiate(cfg.model, **extra)


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def print_summary(metrics: dict[str, float], log_dir: str | None, output_dir: str) -> None:
    """Final metrics table, and where the logs are."""
    if metrics:
        width = max(len(k) for k in metrics)
        print("\nFinal metrics")
        for key in sorted(metrics):
            print(f"  {key:<{width}}  {metrics[key]:.6g}")
    print(f"\nRun directory: {output_dir}")
    if log_dir:
        print(f"TensorBoard logs: {log_dir}\n  view with: tensorboard --logdir {log_dir}")


def route_lightning_logs() -> None:
    """Send Lightning's log records through the root logger only (Hydra's console and ``<run dir>/train.log``).

    The ``lightning`` packages attach their own console handlers when imported before Hydra configures logging;
    lines would then be printed twice, or miss the run's log file.
    """
    if not logging.getLogger().handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True


@dataclass
class Run:
    """Everything one run needs, built from the config but not started."""

    datamodule: L.LightningDataModule
    model: L.LightningModule
    callbacks: list[L.Callback]
    loggers: list[Logger]
    trainer: L.Trainer


def build(cfg: DictConfig) -> Run:
    """Seed, then instantiate callbacks, DataModule, model, loggers and Trainer from ``cfg`` (nothing runs yet)."""
    import lightning as L

    route_lightning_logs()
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    if cfg.get("test_weights", "best") not in ("best", "final"):
        raise ValueError(f"test_weights must be 'best' or 'final', got {cfg.test_weights!r}")
    # Callbacks first: a bad ard.p fails with the callback's own message before any data is read.
    callbacks = build_callbacks(cfg)
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    model = build_model(cfg, datamodule)
    loggers = instantiate_dict(cfg.get("logger"), "logger")
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return Run(datamodule, model, callbacks, loggers, trainer)


def train(cfg: DictConfig) -> dict[str, float]:
    """Build everything from ``cfg``, fit, test; returns the final metrics (fit and test) as floats."""
    run = build(cfg)
    trainer, model, datamodule = run.trainer, run.model, run.datamodule

    trainer.fit(model=model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = _scalars(trainer.callback_metrics)

    if cfg.get("test", True):
        ckpt_path = None
        if cfg.get("test_weights", "best") == "best" and trainer.checkpoint_callback is not None:
            ckpt_path = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
        trainer.test(model=model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)
        metrics.update(_scalars(trainer.callback_metrics))

    output_dir = str(cfg.paths.output_dir)
    if trainer.is_global_zero:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        log_dir = next((os.path.normpath(lg.log_dir) for lg in trainer.loggers if getattr(lg, "log_dir", None)), None)
        print_summary(metrics, log_dir, output_dir)
    return metrics


def objective(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The value of ``optimized_metric`` in ``metrics`` (``None`` when the run did not log it)."""
    name = cfg.get("optimized_metric")
    if not name:
        return None
    value = metrics.get(name)
    if value is None or math.isnan(value):
        print(f"optimized_metric {name!r} was not logged; logged metrics: {sorted(metrics)}")
        return None
    return value


@hydra.main(version_base="1.3", config_path="pkg://lightning_ard.conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Console-script and ``python -m`` entry: train with the composed config, return the monitored metric."""
    return objective(cfg, train(cfg))


if __name__ == "__main__":
    main()
