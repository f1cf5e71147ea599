"""The same spec under ``accelerate launch --multi_gpu --num_processes 2`` on a machine without GPUs
(2 CPU processes, DDP over gloo; see forgetting.train.sequence.make_accelerator for why not ``--cpu``)
gives the results of one process. Tolerance: the two runs differ only in float summation order (the loss of each step is
normalised by the global token count, see forgetting.train.loop), so losses agree to 1e-4 relative
and accuracies to within one example."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from forgetting.spec import parse_spec
from forgetting.train.sequence import run_experiment
from tests.conftest import small_spec


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    spec_dict = small_spec(name="ddp", eval={"every": 3, "heldout_corpus": False})
    spec_path = tmp_path / "ddp.yaml"
    spec_path.write_text(yaml.safe_dump(spec_dict))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FORGETTING_QUIET": "1", "CUDA_VISIBLE_DEVICES": ""}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "-m", "forgetting", "run", str(spec_path), "--out", str(tmp_path / "two"), "--quiet"]
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run_experiment(parse_spec(spec_dict), tmp_path / "one", progress=False)

    import json
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["num_processes"] == 2
    one = pd.read_parquet(tmp_path / "one" / "evals.parquet")
    two = pd.read_parquet(tmp_path / "two" / "evals.parquet")
    keys = ["stage", "step", "task", "metric"]
    merged = one.merge(two, on=keys, suffixes=("_one", "_two"))
    assert len(merged) == len(one) == len(two)
    losses = merged[merged.metric == "loss"]
    assert losses.value_two.to_numpy() == pytest.approx(losses.value_one.to_numpy(), rel=1e-4)
    accuracies = merged[merged.metric != "loss"]
    assert (accuracies.value_one - accuracies.value_two).abs().max() <= 1 / 16 + 1e-9
    log_one = pd.read_parquet(tmp_path / "one" / "train_log.parquet")
    log_two = pd.read_parquet(tmp_path / "two" / "train_log.parquet")
    assert log_two.loss.to_numpy() == pytest.approx(log_one.loss.to_numpy(), rel=1e-4)
