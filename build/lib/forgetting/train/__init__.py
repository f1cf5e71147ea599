"""Sequential fine-tuning (full and LoRA) on accelerate, with training hooks, snapshots and resume."""

from forgetting.train.loop import OptimConfig, train_task
from forgetting.train.sequence import make_accelerator, run_experiment, with_weights

__all__ = ["OptimConfig", "make_accelerator", "run_experiment", "train_task", "with_weights"]
