"""The trainer: builds the run from a config, steps through the phases, validates, checkpoints, logs.

Run folder: config.yaml, split.json, metrics.csv, curves.png and checkpoints/{last,best_teacher,
best_student}.pt. last.pt is written atomically after every epoch, so a run killed at any moment
(SIGKILL included) resumes from its last completed epoch with `resume_training`, and continues
bit-for-bit as the uninterrupted run would on the same machine: every step's randomness (batch
order, patches, augmentation, noise, dropout) is drawn from seeds derived from (seed, rank, step).
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ceds_deploy.errors import ConfigError, DatasetError
from ceds_deploy.io import remove_leftovers
from ceds_deploy.progress import ProgressCallback, ProgressEvent, no_progress
from ceds_deploy.spec import ModelSpec
from ceds_deploy.training import logs, state
from ceds_deploy.training.batches import Batch, BatchMaker, prefetched, step_seeds
from ceds_deploy.training.cache import check_validation_cases, prepare_split
from ceds_deploy.training.config import TrainConfig, build_config
from ceds_deploy.training.data import split_dataset
from ceds_deploy.training.distributed import DistContext, check_device, init_distributed
from ceds_deploy.training.ema import make_teacher
from ceds_deploy.training.methods import Optimization, Stepper
from ceds_deploy.training.precision import CPU_BF16_NOTE, check_finite_losses, resolve_precision, training_cuda_flags
from ceds_deploy.training.sampler import BatchIndices, TwoStreamSampler
from ceds_deploy.training.schedule import RunSchedule
from ceds_deploy.training.transforms import labeled_transforms, unlabeled_transforms
from ceds_deploy.training.validate import validate

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoints"
LOSS_KEYS = ("loss_seg", "loss_conf", "loss_consistency", "consistency_weight", "loss_total")


def spec_for(config: TrainConfig) -> ModelSpec:
    """The ModelSpec every checkpoint of this run carries: the training patch is the inference ROI."""
    return ModelSpec(
        roi_size=config.patch, target_spacing=config.spacing, hu_window=config.hu_window, width=config.width
    )


@dataclass
class TrainSummary:
    """What `Trainer.fit` returns: the run folder, epochs and steps completed, the best validation Dice
    per network with its epoch, and the per-epoch history."""

    run_dir: Path
    epochs: int
    steps: int
    best: dict[str, float]
    history: list[dict] = field(default_factory=list)


class Trainer:
    """One training run: data, the two networks, their optimizers, the loop, checkpoints and logs.

    Progress events (rank 0 only): "preparing" (count = cases to pre-process), "prepared" (info:
    case), "training" (count = the run's steps; info: done, method), "step" (info: phase, epoch,
    epochs, losses), "validated" (info: epoch, dice_student, dice_teacher, auroc_teacher, saved).
    Notes go to the `ceds_deploy.training` logger.
    """

    def __init__(
        self,
        config: TrainConfig,
        run_dir: str | Path,
        *,
        dist: DistContext | None = None,
        progress: ProgressCallback = no_progress,
    ) -> None:
        from ceds_deploy.network import CedsNet, CedsNetConfig

        self.config = config
        self.run_dir = Path(run_dir)
        self.dist = dist or DistContext(device=config.device)
        self.device = torch.device(self.dist.device)
        self.progress = progress if self.dist.is_main else no_progress
        self.spec = spec_for(config)
        self.written: list[Path] = []  # files this process wrote (only rank 0 writes)

        # Data first: every problem with the dataset surfaces before a network is built.
        self.split = split_dataset(config.data_dir, config, self.dist.world_size)
        check_validation_cases(self.split)
        self.data = self._prepare_data()
        self.sampler = TwoStreamSampler(
            len(self.data.labeled),
            len(self.data.unlabeled),
            config.labeled_per_batch,
            config.unlabeled_per_batch,
            config.seed,
            self.dist.rank,
            self.dist.world_size,
        )
        self.batches = BatchMaker(self.data, labeled_transforms(config), unlabeled_transforms(config))
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.total_steps = config.total_steps(self.steps_per_epoch)
        self.total_epochs = config.total_epochs(self.steps_per_epoch)
        self.val_every = config.validation_interval(self.total_epochs)
        self.schedule = RunSchedule.from_config(config, self.total_steps)

        torch.manual_seed(config.seed)  # the same initial weights on every process (and broadcast below)
        self.net_config = CedsNetConfig(width=config.width, dropout=config.dropout)
        self.student = CedsNet(self.net_config).to(self.device)
        self.dist.broadcast_module(self.student)
        self.teacher = make_teacher(self.student)
        self.confidence = Optimization.sgd(self.student.confidence_parameters(), config, self.total_steps)
        self.segmentation = Optimization.sgd(self.student.segmentation_parameters(), config, self.total_steps)
        owned = {id(p) for p in self.confidence.params} | {id(p) for p in self.segmentation.params}
        if owned != {id(p) for p in self.student.parameters()} or len(self.confidence.params) + len(
            self.segmentation.params
        ) != len(owned):
            raise RuntimeError("the two optimizers must split the network's parameters exactly")
        self.precision = resolve_precision(config.precision, self.dist.device)
        self.scaler = self.precision.grad_scaler()
        nets = (self.student, self.teacher, self.confidence, self.segmentation)
        self.stepper = Stepper(config, *nets, self.scaler, self.dist, self.precision)

        self.epoch = 0  # epochs completed
        self.global_step = 0
        self.should_stop: Callable[[int], bool] | None = None  # set by fit
        self.stopped_early = False
        self.best: dict[str, float] = {}
        self.history: list[dict] = []

    # ------------------------------------------------------------------ setup

    def _prepare_data(self):
        split = self.split
        need_unlabeled = self.config.method != "supervised"
        total = len(split.labeled) + (len(split.unlabeled) if need_unlabeled else 0)
        self.progress(ProgressEvent("preparing", total))
        return prepare_split(
            split,
            self.spec,
            unlabeled=need_unlabeled,
            advance=lambda name: self.progress(ProgressEvent("prepared", 1, {"case": name})),
        )

    @property
    def checkpoint_dir(self) -> Path:
        """The folder of the run's checkpoints (last.pt, best_teacher.pt, best_student.pt)."""
        return self.run_dir / CHECKPOINT_DIR

    # ------------------------------------------------------------------ the loop

    def fit(
        self, stop_after_epochs: int | None = None, should_stop: Callable[[int], bool] | None = None
    ) -> TrainSummary:
        """Train to the end of the run (or `stop_after_epochs` more epochs, for tests and drills).

        `should_stop(steps_done)` is asked after every step (a time cap, say): when it answers True
        the current epoch ends there, is validated and checkpointed, and training stops early.
        Single-process runs only, since ranks would disagree on a clock.
        """
        if should_stop is not None and self.dist.world_size > 1:
            raise ConfigError("should_stop works in single-process runs only")
        self.should_stop, self.stopped_early = should_stop, False
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for folder in (self.run_dir, self.checkpoint_dir):  # temp files of a killed earlier process
                remove_leftovers(folder)
            logs.write_run_files(self.run_dir, self.config, self.split)
        stop_at = (
            self.total_epochs if stop_after_epochs is None else min(self.total_epochs, self.epoch + stop_after_epochs)
        )
        empty = [c.name for c, d in zip(self.split.labeled, self.data.labeled) if not bool(d["label"].any())]
        if empty and self.dist.is_main:
            log.warning(
                "no tumour voxels at the training spacing in %s: their patches are all negative", ", ".join(empty)
            )
        if not self.split.validation and self.dist.is_main:
            log.warning("no validation cases (--val-fraction 0): best_*.pt are not written")
        self.progress(
            ProgressEvent("training", self.total_steps, {"done": self.global_step, "method": self.config.method})
        )
        if self.dist.is_main:
            log.info("training in %s on %s", self.precision.name, self.dist.device)
            if (self.precision.name, self.precision.device_type) == ("bf16", "cpu"):
                log.info(CPU_BF16_NOTE)
        with training_cuda_flags(self.dist.device):
            while self.epoch < stop_at and not self.stopped_early:
                row = self._train_epoch()
                self._end_epoch(row)
        if self.dist.is_main and (self.epoch == self.total_epochs or self.stopped_early):
            self._calibrate()
        return TrainSummary(self.run_dir, self.epoch, self.global_step, dict(self.best), list(self.history))

    def _train_epoch(self) -> dict:
        start = time.perf_counter()
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        phases: list[str] = []
        plan = [
            (step, indices)
            for step, indices in enumerate(self.sampler.epoch(self.epoch), start=self.global_step)
            if step < self.total_steps  # --iterations ends inside an epoch
        ]
        batches = prefetched(plan, self._host_batch, self.config.prefetch_batches)
        try:
            for (step, _), host_batch in zip(plan, batches):
                torch_seed, _ = step_seeds(self.config.seed, self.dist.rank, step)
                torch.manual_seed(torch_seed)
                phase = self.schedule.phase(step)
                losses = self.stepper.run(phase, host_batch.to(self.device), self.schedule.rampup(step))
                check_finite_losses(losses, step + 1, self.precision)
                self.global_step = step + 1
                if phase not in phases:
                    phases.append(phase)
                for key, value in losses.items():
                    sums[key] += value
                    counts[key] += 1
                info = {"phase": phase, "epoch": self.epoch + 1, "epochs": self.total_epochs, "losses": losses}
                self.progress(ProgressEvent("step", 1, info))
                if self.should_stop is not None and self.should_stop(self.global_step):
                    self.stopped_early = self.global_step < self.total_steps
                    break
        finally:
            batches.close()  # a step that failed or stopped early: the batch being made ahead is dropped
        keys = [k for k in LOSS_KEYS if counts[k]]
        means = self.dist.all_mean([sums[k] / counts[k] for k in keys])
        row = {
            "epoch": self.epoch + 1,
            "step": self.global_step,
            "phases": "+".join(phases),
            "lr_segmentation": self.segmentation.lr,
            "lr_confidence": self.confidence.lr,
            "precision": self.precision.name,
            **{k: math.nan for k in LOSS_KEYS},
            **dict(zip(keys, means)),
        }
        row["seconds"] = time.perf_counter() - start
        return row

    def _host_batch(self, job: tuple[int, BatchIndices]) -> Batch:
        """One step's batch in host memory (pinned for a GPU); seeded by the step alone, so made ahead."""
        step, indices = job
        _, transform_seed = step_seeds(self.config.seed, self.dist.rank, step)
        return self.batches.make_host(indices, transform_seed, pin=self.device.type == "cuda")

    def _validation_due(self) -> bool:
        return bool(self.split.validation) and (
            self.epoch % self.val_every == 0 or self.epoch == self.total_epochs or self.stopped_early
        )

    def _validate(self, row: dict) -> list[str]:
        """Validate (each process a share of the cases), fill `row`, update the bests; returns the
        best_*.pt files to write."""
        from ceds_deploy.training.validate import ValidationResult

        mine = self.split.validation[self.dist.rank :: self.dist.world_size]
        result = validate(
            {"student": self.student, "teacher": self.teacher},
            mine,
            self.spec,
            device=self.dist.device,
            batch_size=self.config.val_batch_size,
            overlap=self.config.val_overlap,
        )
        result = ValidationResult(self.dist.gather(result.cases))
        improved = []
        for net in ("student", "teacher"):
            row[f"dice_{net}"] = result.mean(net, "dice")
            row[f"auroc_{net}"] = result.mean(net, "auroc")
            if row[f"dice_{net}"] > self.best.get(net, -math.inf):
                self.best[net], self.best[f"{net}_epoch"] = row[f"dice_{net}"], self.epoch
                improved.append(f"best_{net}.pt")
        return improved

    def _end_epoch(self, row: dict) -> None:
        self.epoch += 1
        self.dist.check_replicas_equal(self.student, "student")
        self.dist.check_replicas_equal(self.teacher, "teacher")
        validated = self._validation_due()
        start = time.perf_counter()
        improved = self._validate(row) if validated else []
        if validated:
            row["validation_seconds"] = time.perf_counter() - start
        self.history.append(row)  # the same on every process: losses and scores are all-reduced
        if self.dist.is_main:
            payload = state.build_payload(self)
            self._write(state.LAST, payload)
            for name in improved:
                self._write(name, payload)
            logs.write_metrics(self.run_dir, self.history)
            self.written.append(self.run_dir / logs.METRICS_CSV)
            if validated or self.epoch == self.total_epochs:
                logs.draw_curves(
                    self.run_dir,
                    self.history,
                    f"{self.config.method}, width {self.config.width}, {self.global_step}/{self.total_steps} steps",
                )
                self.written.append(self.run_dir / logs.CURVES_PNG)
            if validated:
                self._report_validation(row, improved)
        self.dist.barrier()

    def _report_validation(self, row: dict, saved: list[str]) -> None:
        scores = {k: row[k] for k in ("dice_student", "dice_teacher", "auroc_teacher")}
        log.info(
            "epoch %d: Dice student %.3f, teacher %.3f, confidence AUROC %.3f%s",
            self.epoch,
            *scores.values(),
            f" -> saved {', '.join(saved)}" if saved else "",
        )
        self.progress(ProgressEvent("validated", 0, {"epoch": self.epoch, **scores, "saved": saved}))

    def _calibrate(self) -> None:
        """When the run ends: fit best_teacher.pt's confidence calibration (training.calibrate)."""
        from ceds_deploy.training.calibrate import calibrate_finished_run

        written = calibrate_finished_run(
            self.run_dir, self.checkpoint_dir, self.split.validation, self.config, self.dist.device
        )
        self.written.extend(written)

    def _write(self, name: str, payload: dict) -> None:
        path = state.save(self.checkpoint_dir / name, payload)
        self.written.append(path)


# ---------------------------------------------------------------------- entry points


def _check_new_run(run_dir: Path) -> None:
    last = run_dir / CHECKPOINT_DIR / state.LAST
    if last.exists():
        raise ConfigError(
            f"{run_dir} already holds a run ({last}); continue it with --resume {run_dir} or choose another --out"
        )


def start_training(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    progress: ProgressCallback = no_progress,
    stop_after_epochs: int | None = None,
    should_stop: Callable[[int], bool] | None = None,
) -> TrainSummary:
    """A new run in `run_dir` (joins a torchrun process group when there is one); `should_stop`: see
    `Trainer.fit`."""
    run_dir = Path(run_dir)
    _check_new_run(run_dir)
    dist = init_distributed(config.device)
    try:
        check_device(dist.device)
        trainer = Trainer(config, run_dir, dist=dist, progress=progress)
        return trainer.fit(stop_after_epochs, should_stop)
    finally:
        dist.shutdown()


def resume_training(
    run_dir: str | Path,
    *,
    device: str | None = None,
    progress: ProgressCallback = no_progress,
    stop_after_epochs: int | None = None,
    should_stop: Callable[[int], bool] | None = None,
) -> TrainSummary:
    """Continue the run in `run_dir` from checkpoints/last.pt, with its saved config."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_DIR / state.LAST
    if run_dir.is_file():
        raise ConfigError(f"{run_dir}: is a file; --resume takes the run folder (the one holding checkpoints/)")
    if not path.is_file():
        raise ConfigError(f"{run_dir}: nothing to resume ({path} does not exist)")
    payload = state.load_training_state(path)
    config = build_config(payload["config"], str(path))
    if device is not None:
        config = config.replace(device=device)
    dist = init_distributed(config.device)
    try:
        check_device(dist.device)
        trainer = Trainer(config, run_dir, dist=dist, progress=progress)
        if trainer.split.to_dict() != payload.get("split", trainer.split.to_dict()):
            raise DatasetError(
                f"{config.data_dir}: the dataset's cases changed since the run started; "
                f"resuming would train on other data"
            )
        if int(payload.get("world_size", 1)) != dist.world_size and dist.is_main:
            log.warning(
                "resuming a %s-process run with %d process(es): batches differ from the original",
                payload.get("world_size"),
                dist.world_size,
            )
        state.restore(trainer, payload, path)
        return trainer.fit(stop_after_epochs, should_stop)
    finally:
        dist.shutdown()
