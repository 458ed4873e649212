"""One training step of each phase, for the three methods.

| phase   | ceds                                  | mean-teacher          | supervised            |
|---------|---------------------------------------|-----------------------|-----------------------|
| warmup  | clean labeled input: DiceCE -> opt B, | DiceCE -> opt B       | DiceCE -> opt B       |
|         | confidence CE -> opt A                |                       |                       |
| refresh | noisy input, confidence CE on the     | (no refresh)          | (no refresh)          |
|         | labeled part -> opt A only            |                       |                       |
| semi    | noisy student, DiceCE on labeled +    | the same, no gate     | noisy labeled DiceCE  |
|         | ramp * gated consistency -> opt B     |                       | only -> opt B         |

Optimizer A holds the confidence branch (decoder 2, CBAM, confidence output), optimizer B the
encoder and decoder 1. Each optimizer gets the gradient of its own loss only (`backward(inputs=)`),
as the reference's zero_grad/backward/step sequence does. The teacher follows the student by EMA
after every warm-up and semi step; its step counter counts semi steps only (as the reference's
iter_num), so during the warm-up it tracks the student exactly (alpha = 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ceds_deploy.training.batches import Batch
from ceds_deploy.training.config import TrainConfig
from ceds_deploy.training.distributed import DistContext
from ceds_deploy.training.ema import ema_alpha, update_teacher
from ceds_deploy.training.losses import confidence_loss, consistency_loss, segmentation_loss
from ceds_deploy.training.precision import TrainPrecision, resolve_precision
from ceds_deploy.training.schedule import REFRESH, SEMI, WARMUP


def add_noise(x: torch.Tensor, std: float, clamp: float) -> torch.Tensor:
    """x + clamp(N(0, std), -clamp, clamp)."""
    return x + torch.clamp(torch.randn_like(x) * std, -clamp, clamp)


@dataclass
class Optimization:
    """One optimizer with its parameters and cosine schedule."""

    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler

    @classmethod
    def sgd(cls, params, config: TrainConfig, total_steps: int) -> Optimization:
        """SGD over `params` with the config's lr, momentum and weight decay, and a cosine schedule down to
        `min_lr` over `total_steps` optimizer steps."""
        params = list(params)
        opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        # Each schedule advances only when its optimizer steps (as the reference), over the run's steps.
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps), eta_min=config.min_lr)
        return cls(params, opt, sched)

    @property
    def lr(self) -> float:
        """The optimizer's current learning rate."""
        return float(self.optimizer.param_groups[0]["lr"])


class Stepper:
    """Runs the steps; owns nothing but references to the training state.

    Forward passes run under the precision's autocast (`precision`, else the config's resolved on
    the run's device); every loss is computed in float32 outside it, and with fp16 the `scaler`
    scales the losses and skips steps whose gradients overflowed.
    """

    def __init__(
        self,
        config: TrainConfig,
        student: nn.Module,
        teacher: nn.Module,
        confidence: Optimization,
        segmentation: Optimization,
        scaler: torch.amp.GradScaler,
        dist: DistContext,
        precision: TrainPrecision | None = None,
    ) -> None:
        self.config = config
        self.precision = precision or resolve_precision(config.precision, dist.device)
        self.student = student
        self.teacher = teacher
        self.confidence = confidence
        self.segmentation = segmentation
        self.scaler = scaler
        self.dist = dist
        self.seg_loss = segmentation_loss()
        self.ema_step = 0  # semi-supervised teacher updates so far
        self.guards = self.precision.guard_convolutions(student, teacher)

    # ------------------------------------------------------------------ plumbing

    def _autocast(self):
        return self.precision.autocast()

    def _backward(self, loss: torch.Tensor, opt: Optimization, retain: bool = False) -> None:
        opt.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward(inputs=opt.params, retain_graph=retain)

    def _step(self, opt: Optimization) -> None:
        self.dist.average_gradients(opt.params)
        self.scaler.step(opt.optimizer)
        opt.scheduler.step()

    def _finish(self, teacher_update: bool, count_ema: bool) -> None:
        self.scaler.update()
        self.dist.average_buffers(self.student)
        if teacher_update:
            update_teacher(self.teacher, self.student, ema_alpha(self.ema_step, self.config.ema_decay))
            if count_ema:
                self.ema_step += 1

    # ------------------------------------------------------------------ phases

    def run(self, phase: str, batch: Batch, rampup: float) -> dict[str, float]:
        """One training step of `phase` on `batch` (puts both networks in train mode); returns its losses by
        name. `rampup` is the consistency weight's ramp-up factor; `ValueError` for an unknown phase."""
        self.student.train()
        self.teacher.train()  # the teacher's dropout is part of the perturbation, as in mean teacher
        if phase == WARMUP:
            return self.warmup(batch, train_confidence=self.config.method == "ceds")
        if phase == REFRESH:
            return self.refresh(batch)
        if phase == SEMI:
            if self.config.method == "supervised":
                return self.supervised(batch)
            return self.semi(batch, rampup, gated=self.config.method == "ceds")
        raise ValueError(f"unknown phase {phase!r}")

    def warmup(self, batch: Batch, train_confidence: bool) -> dict[str, float]:
        """A labeled-only step: segmentation loss -> segmentation optimizer and, with `train_confidence`,
        confidence loss -> confidence optimizer; then the teacher follows. Returns the losses."""
        with self._autocast():
            seg, conf = self.student(batch.labeled_images)
        seg_loss = self.seg_loss(seg.float(), batch.labels)
        out = {"loss_seg": seg_loss.item()}
        if train_confidence:
            conf_loss = confidence_loss(conf, seg.detach().float(), batch.labels)
            self._backward(conf_loss, self.confidence, retain=True)
            self._step(self.confidence)
            out["loss_conf"] = conf_loss.item()
        self._backward(seg_loss, self.segmentation)
        self._step(self.segmentation)
        self._finish(teacher_update=True, count_ema=False)
        out["loss_total"] = out["loss_seg"] + out.get("loss_conf", 0.0)
        return out

    def refresh(self, batch: Batch) -> dict[str, float]:
        """Confidence loss on noisy input (labeled part) -> confidence optimizer only; no teacher update.
        Returns the loss."""
        cfg, n = self.config, batch.n_labeled
        x = add_noise(batch.images, *cfg.student_noise)
        with self._autocast():
            seg, conf = self.student(x)
        conf_loss = confidence_loss(conf[:n], seg[:n].detach().float(), batch.labels)
        self._backward(conf_loss, self.confidence)
        self._step(self.confidence)
        self._finish(teacher_update=False, count_ema=False)
        value = conf_loss.item()  # this step's loss (the reference logged a stale one here)
        return {"loss_conf": value, "loss_total": value}

    def semi(self, batch: Batch, rampup: float, gated: bool) -> dict[str, float]:
        """Noisy student: labeled segmentation loss plus `rampup`-weighted consistency with the noisy teacher
        (gated by its confidence when `gated`) -> segmentation optimizer; then the teacher follows.
        Returns the losses and the consistency weight."""
        cfg, n = self.config, batch.n_labeled
        x = add_noise(batch.images, *cfg.student_noise)
        with self._autocast():
            # Labeled and unlabeled parts go through the student separately (their own batch
            # statistics), as the reference does.
            seg_l, _ = self.student(x[:n])
            seg_u, _ = self.student(x[n:])
        seg = torch.cat([seg_l.float(), seg_u.float()])
        sup = self.seg_loss(seg[:n], batch.labels)
        with torch.no_grad(), self._autocast():
            t_seg, t_conf = self.teacher(add_noise(batch.images, *cfg.teacher_noise))
        cons = consistency_loss(seg, t_seg, t_conf if gated else None, cfg.temperature)
        weight = cfg.consistency_weight * rampup
        total = sup + weight * cons
        self._backward(total, self.segmentation)
        self._step(self.segmentation)
        self._finish(teacher_update=True, count_ema=True)
        return {
            "loss_seg": sup.item(),
            "loss_consistency": cons.item(),
            "consistency_weight": weight,
            "loss_total": total.item(),
        }

    def supervised(self, batch: Batch) -> dict[str, float]:
        """The semi step without unlabeled data: the baseline that isolates what they add."""
        x = add_noise(batch.labeled_images, *self.config.student_noise)
        with self._autocast():
            seg, _ = self.student(x)
        sup = self.seg_loss(seg.float(), batch.labels)
        self._backward(sup, self.segmentation)
        self._step(self.segmentation)
        self._finish(teacher_update=True, count_ema=True)
        return {"loss_seg": sup.item(), "loss_total": sup.item()}
