"""Sequential fine-tuning (full and LoRA) on accelerate, with snapshots and resume."""

from forgetting.train.loop import OptimConfig, train_task
from forgetting.train.sequence import run_experiment

__all__ = ["OptimConfig", "run_experiment", "train_task"]
