"""CEDS semi-supervised training (installed as ceds_deploy.training).

Modules, one job each: `config` (TrainConfig), `schedule` (phases, ramp-up), `data` (dataset folder
and split), `cache` (pre-processing once, label checks), `transforms` (MONAI patch sampling and
augmentation), `sampler` (two-stream batches), `batches` (tensors of a step), `losses`, `ema`,
`methods` (one step of each phase), `distributed` (torchrun data parallelism), `validate` and
`metrics`, `state` (checkpoint payload), `logs` and `progress`, `loop` (the trainer and its entry
points `start_training` / `resume_training`).
"""
