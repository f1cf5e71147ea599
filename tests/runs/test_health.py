"""Divergence read from a run's tables (forgetting.runs.health): the rule's known answers, no false
alarm on any published run, and a real diverged run through the command line."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from forgetting import paths
from forgetting.cli import main
from forgetting.runs import Run
from forgetting.errors import TrainingDiverged
from forgetting.runs.health import BlowUpGuard, check_health, run_problems, stage_problems
from tests.conftest import small_spec

V = 359  # the embedded tiny model's output vocabulary: ln V = 5.88


def test_a_smoothed_rise_above_twice_the_loss_before_is_flagged_and_one_noisy_step_is_not():
    calm = np.array([12.0, 10, 8, 30, 6, 5, 4, 3, 2, 1])  # one batch at 30: its 3-step mean is 14.7 < 2 x 12
    assert stage_problems(calm, V, loss_before=12.0) == []
    blown = np.array([12.0, 20, 40, 60, 50, 30, 10, 5, 4, 3])  # 3-step mean 50 > 24
    (problem,) = stage_problems(blown, V, loss_before=12.0)
    assert "rose to 50.0 nats, above 2 x max(its loss before the stage 12.00, ln(359) = 5.88) = 24.0" in problem


def test_the_uniform_loss_is_the_floor_of_the_limit():
    loss = np.full(10, 11.0)  # from a loss before of 1.0, a rise to 11 > 2 x 1 but < 2 x ln V = 11.77
    assert stage_problems(loss, V, loss_before=1.0) == []
    assert stage_problems(loss + 1.0, V, loss_before=1.0) != []  # 12 > 11.77
    assert math.isclose(2 * math.log(V), 11.766, abs_tol=1e-3)


def test_non_finite_losses_and_evaluations_are_named():
    assert stage_problems(np.array([1.0, np.nan, 1.0]), V) == ["its loss became non-finite at logged step 1"]
    log = pd.DataFrame({"stage": [1, 1, 1], "task": ["a"] * 3, "step": [1, 2, 3], "loss": [3.0, 2.0, 1.0]})
    evals = pd.DataFrame({"stage": [0, 0, 1], "task": ["a", "a", "a"], "metric": ["loss", "exact_match", "loss"],
                          "value": [np.nan, np.nan, 1.0], "end_of_stage": [True, True, True]})
    assert run_problems(log, evals, V) == [
        "the evaluation of stage 0 (the base model) has non-finite values: a loss"]  # a missing match is not a problem


def test_no_run_published_in_data_results_is_flagged():
    runs = [Run.open(folder.parent) for folder in sorted((paths.DATA_DIR / "results").glob("*/train_log.parquet"))]
    assert len(runs) >= 100  # the profiles' published runs are here
    flagged = {run.folder.name: problems for run in runs if (problems := check_health(run))}
    assert flagged == {}


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diverged")
    spec = tmp / "spec.yaml"
    spec.write_text(yaml.safe_dump(small_spec(optimizer={"lr": 1.0, "warmup_steps": 2}, steps_per_task=20)))
    return spec, tmp / "run"


def test_a_diverged_run_stops_during_its_stage_with_exit_1_and_show_and_analyze_say_why(diverged, capsys):
    spec, run = diverged
    assert main(["run", str(spec), "--out", str(run), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "stage 1 (recall_city) stopped at step 5 of 20: its loss (a running mean over 3 steps) rose to" in err
    assert "gradient clipping is already on (optimizer.max_grad_norm: 1), so lower optimizer.lr (now 1)" in err
    assert "resuming would repeat the same steps, so change the spec and run into a new folder" in err
    log = pd.read_parquet(run / "train_log.parquet")
    assert log["step"].tolist() == [1, 2, 3, 4, 5]  # stopped at once: 15 steps of a broken model not trained
    assert json.loads((run / "state.json").read_text())["completed_stages"] == 0
    assert main(["show", str(run)]) == 0
    out = capsys.readouterr().out
    assert "warning: training diverged: stage 1 (recall_city)" in out
    assert "only the base model's evaluation is complete" in out and "base " in out
    assert main(["analyze", str(run), "--examples", "4", "--quiet"]) == 1
    assert "training diverged" in capsys.readouterr().err
    assert not (run / "analysis").exists()


class _Step:
    """What BlowUpGuard reads of a training hook's context."""

    def __init__(self, loss, step, steps=10):
        self.loss, self.step, self.steps, self.stage, self.task_name = loss, step, steps, 1, "a"


@pytest.mark.parametrize("losses, before", [
    ([12.0, 10, 8, 30, 6, 5, 4, 3, 2, 1], 12.0),   # one noisy batch: not flagged
    ([12.0, 20, 40, 60, 50, 30, 10, 5, 4, 3], 12.0),  # a blow-up: flagged
    ([11.0] * 10, 1.0), ([12.0] * 10, 1.0),       # under and over 2 ln V
    ([5.0, 4, 3, 30, 40, 2, 1, 1, 1, 1], None),   # no loss before: the first k steps stand in
])
def test_the_guard_stops_exactly_the_stages_the_rule_flags(losses, before):
    """The online guard and the rule on the finished table agree; the guard stops at the first step
    whose running mean breaks the limit."""
    guard = BlowUpGuard(len(losses), V, before)
    stopped = None
    for step, loss in enumerate(losses, 1):
        try:
            guard.after_step(_Step(loss, step))
        except TrainingDiverged:
            stopped = step
            break
    assert (stopped is not None) == bool(stage_problems(np.array(losses), V, before))
    if stopped is not None:  # the step is the first at which the running mean passes the limit
        k = 3
        means = pd.Series(losses).rolling(k, min_periods=1).mean()
        limit = 2 * max(before if before is not None else np.mean(losses[:k]), math.log(V))
        assert stopped == int((means > limit).to_numpy().argmax()) + 1


def test_a_base_model_with_a_non_finite_loss_is_not_trained(tmp_path, monkeypatch):
    import torch

    from forgetting.spec import parse_spec
    from forgetting.train import sequence as seq

    real = seq.model_for_spec

    def broken(spec):
        model, tokenizer = real(spec)
        torch.nn.init.constant_(model.get_output_embeddings().weight, float("nan"))
        return model, tokenizer

    monkeypatch.setattr(seq, "model_for_spec", broken)
    with pytest.raises(TrainingDiverged, match=r"the base model's loss on .* is not finite before any training"):
        seq.run_experiment(parse_spec(small_spec()), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "state.json").exists()  # nothing committed, nothing trained


def test_a_healthy_run_is_not_flagged(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(small_spec(steps_per_task=20)))
    assert main(["run", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert check_health(Run.open(tmp_path / "run")) == []
