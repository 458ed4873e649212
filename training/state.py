"""The training checkpoint: what `last.pt`, `best_teacher.pt` and `best_student.pt` hold, and how a run
is restored from it. Everything is plain containers of tensors, numbers and strings, because
checkpoints are loaded with `torch.load(weights_only=True)`."""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ceds_deploy.checkpoint import load_checkpoint, save_checkpoint
from ceds_deploy.errors import ArtifactError

LAST, BEST_TEACHER, BEST_STUDENT = "last.pt", "best_teacher.pt", "best_student.pt"


def rng_state() -> dict[str, Any]:
    """The global generators' states as plain data (numpy arrays and tuples become lists)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(gauss)],
        "python": [int(version), [int(v) for v in internal], gauss_next],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the global generators from what `rng_state()` returned (CUDA's only where a GPU is available)."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def build_payload(trainer) -> dict[str, Any]:
    """Both networks, both optimizers and schedules, the scaler, counters, history, RNG, config, spec."""
    return {
        "spec": trainer.spec.to_dict(),
        "net_config": asdict(trainer.net_config),
        "teacher": trainer.teacher.state_dict(),
        "student": trainer.student.state_dict(),
        "optimizer_confidence": trainer.confidence.optimizer.state_dict(),
        "optimizer_segmentation": trainer.segmentation.optimizer.state_dict(),
        "scheduler_confidence": trainer.confidence.scheduler.state_dict(),
        "scheduler_segmentation": trainer.segmentation.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "epoch": trainer.epoch,  # epochs completed
        "global_step": trainer.global_step,
        "ema_step": trainer.stepper.ema_step,
        "best": dict(trainer.best),
        "history": [dict(row) for row in trainer.history],
        "rng": rng_state(),
        "config": trainer.config.to_dict(),
        "split": trainer.split.to_dict(),
        "world_size": trainer.dist.world_size,
    }


def save(path: Path, payload: dict[str, Any]) -> Path:
    """Write the training checkpoint `payload` to `path` atomically and return the path."""
    return save_checkpoint(path, payload)


def load_training_state(path: Path) -> dict[str, Any]:
    """The payload of the training checkpoint at `path`. `ArtifactError` when the file cannot be loaded
    or holds no training state (an inference checkpoint, say): only a run's last.pt can be resumed."""
    payload = load_checkpoint(path)
    missing = [
        k
        for k in ("student", "optimizer_confidence", "optimizer_segmentation", "config", "epoch", "global_step")
        if k not in payload
    ]
    if missing:
        raise ArtifactError(
            f"{path}: not a training checkpoint (no {', '.join(missing)}); only last.pt of a run can be resumed"
        )
    return payload


def restore(trainer, payload: dict[str, Any], path: Path) -> None:
    """Put a trainer (built from the same config) back where `payload` left it."""
    try:
        trainer.student.load_state_dict(payload["student"])
        trainer.teacher.load_state_dict(payload["teacher"])
        trainer.confidence.optimizer.load_state_dict(payload["optimizer_confidence"])
        trainer.segmentation.optimizer.load_state_dict(payload["optimizer_segmentation"])
        trainer.confidence.scheduler.load_state_dict(payload["scheduler_confidence"])
        trainer.segmentation.scheduler.load_state_dict(payload["scheduler_segmentation"])
        if trainer.scaler.is_enabled() and payload.get("scaler"):
            # A run resumed in another precision (on another device, say) starts a fresh scale.
            trainer.scaler.load_state_dict(payload["scaler"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise ArtifactError(f"{path}: training state does not fit this run: {str(err).splitlines()[0]}") from None
    trainer.epoch = int(payload["epoch"])
    trainer.global_step = int(payload["global_step"])
    trainer.stepper.ema_step = int(payload["ema_step"])
    trainer.best = dict(payload.get("best", {}))
    trainer.history = [dict(row) for row in payload.get("history", [])]
    set_rng_state(payload["rng"])
