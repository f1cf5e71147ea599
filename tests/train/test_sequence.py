"""Sequential fine-tuning: run folders, R, resume after interruption, divergence, accumulation."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from forgetting.errors import SpecError, TrainingDiverged
from forgetting.hooks import TrainingHook
from forgetting.runs import Run
from forgetting.spec import parse_spec
from forgetting.train import sequence as seq
from forgetting.train.loop import OptimConfig, train_task
from tests.conftest import small_spec


def _run(tmp_path, name="run", **overrides):
    spec = parse_spec(small_spec(**overrides))
    return spec, seq.run_experiment(spec, tmp_path / name, progress=False)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One uninterrupted run of the small spec, shared by the tests that only read it."""
    tmp = tmp_path_factory.mktemp("finished")
    return _run(tmp, snapshots={"every": 3})


def test_run_folder_has_manifest_tables_and_snapshots(finished):
    spec, out = finished
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spec_hash"] == spec.hash() and manifest["seed"] == 0
    assert {"package_version", "git_commit", "created_at"} <= set(manifest)
    evals = pd.read_parquet(out / "evals.parquet")
    end = evals[evals.end_of_stage & (evals.metric == "exact_match") & (evals.task_index >= 0)]
    assert sorted(set(zip(end.stage, end.task_index))) == [(s, t) for s in range(3) for t in range(2)]
    # every 3 steps within a task of 6 steps: one mid-task evaluation per stage
    assert sorted(evals[~evals.end_of_stage].step.unique()) == [3, 9]
    state = json.loads((out / "state.json").read_text())
    assert state["completed_stages"] == 2
    assert state["snapshots"] == [
        "stage00-base", "stage01-recall_city-step000003", "stage01-recall_city",
        "stage02-update_city-step000009", "stage02-update_city",
    ]
    assert [s.label for s in Run.open(out).snapshots()] == state["snapshots"]  # on disk, in step order
    assert all((out / "snapshots" / s / "weights.safetensors").is_file() for s in state["snapshots"])
    assert not list(out.rglob("*.tmp"))


def test_training_lowers_the_loss_of_the_task_being_trained(finished):
    _, out = finished
    log = pd.read_parquet(out / "train_log.parquet")
    assert list(log.step) == list(range(1, 13))
    first = log[log.stage == 1].loss
    assert first.iloc[-1] < first.iloc[0]
    evals = pd.read_parquet(out / "evals.parquet")
    city_loss = evals[(evals.task == "recall_city") & (evals.metric == "loss") & evals.end_of_stage]
    assert city_loss[city_loss.stage == 1].value.item() < city_loss[city_loss.stage == 0].value.item()


def test_resume_after_interruption_gives_identical_results(tmp_path, finished, monkeypatch):
    spec, reference_out = finished
    real_train_task = seq.train_task

    class Kill(TrainingHook):  # called after the run's own recorder, which is the last hook
        def after_step(self, ctx):
            if ctx.step == 4:
                raise KeyboardInterrupt  # stands in for a kill in the middle of task 2

    def interrupted(*args, **kwargs):
        if kwargs["task_name"] == "update_city":
            kwargs["hooks"] = [*kwargs["hooks"], Kill()]
        return real_train_task(*args, **kwargs)

    monkeypatch.setattr(seq, "train_task", interrupted)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        seq.run_experiment(spec, out, progress=False)
    assert json.loads((out / "state.json").read_text())["completed_stages"] == 1
    monkeypatch.setattr(seq, "train_task", real_train_task)
    seq.run_experiment(spec, out, progress=False)
    for table in ("evals.parquet", "train_log.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / table), pd.read_parquet(reference_out / table))


def test_a_complete_run_is_not_run_again(finished, monkeypatch):
    spec, out = finished
    monkeypatch.setattr(seq, "model_for_spec", lambda spec: pytest.fail("a complete run must not load a model"))
    assert seq.run_experiment(spec, out, progress=False) == out


def test_a_folder_of_another_spec_is_refused(finished):
    _, out = finished
    with pytest.raises(SpecError, match="holds a run of another spec"):
        seq.run_experiment(parse_spec(small_spec(seed=5)), out, progress=False)


def test_a_nan_loss_stops_with_a_clear_error_and_keeps_completed_tasks(tmp_path, monkeypatch):
    real = seq.train_task

    def poisoned(model, data, **kwargs):
        if kwargs["task_name"] == "update_city":
            torch.nn.init.constant_(next(p for p in model.parameters() if p.requires_grad), float("nan"))
        return real(model, data, **kwargs)

    monkeypatch.setattr(seq, "train_task", poisoned)
    spec = parse_spec(small_spec())
    with pytest.raises(TrainingDiverged, match="task 'update_city', step 1: the loss became nan"):
        seq.run_experiment(spec, tmp_path / "nan", progress=False)
    state = json.loads((tmp_path / "nan" / "state.json").read_text())
    assert state["completed_stages"] == 1
    assert (tmp_path / "nan" / "snapshots" / "stage01-recall_city" / "weights.safetensors").is_file()


def test_gradient_accumulation_matches_one_big_batch():
    from accelerate import Accelerator

    from forgetting.evaluate import prepare_task
    from forgetting.models import load_model
    from forgetting.tasks import make_task

    results = []
    for accum in (1, 4):
        model, tok = load_model("tiny")
        data = prepare_task(make_task("recall_city", n_train=32, n_eval=4), tok).train
        losses = train_task(model, data, steps=3, batch_size=16, grad_accum=accum, optim=OptimConfig(lr=1e-3),
                            seed=0, accelerator=Accelerator())
        results.append((losses, torch.cat([p.detach().flatten() for p in model.parameters()])))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)


def test_reference_run_gives_intransigence(tmp_path):
    _, out = _run(tmp_path, reference={"enabled": True, "steps": 6})
    ref = pd.read_parquet(out / "reference.parquet")
    assert set(ref.task) == {"recall_city", "update_city"} and (ref.stage == -1).all()
    assert json.loads((out / "state.json").read_text())["reference_done"] is True


def test_lora_run_trains_and_snapshots_only_the_adapter(tmp_path):
    from safetensors.torch import load_file

    _, out = _run(tmp_path, finetune={"method": "lora", "lora": {"r": 4, "alpha": 8}})
    weights = load_file(out / "snapshots" / "stage01-recall_city" / "weights.safetensors")
    assert weights and all("lora_" in name for name in weights)
    base = load_file(out / "snapshots" / "stage00-base" / "weights.safetensors")
    assert any(not torch.equal(weights[k], base[k]) for k in weights)  # the adapter moved
    evals = pd.read_parquet(out / "evals.parquet")
    loss = evals[(evals.task == "recall_city") & (evals.metric == "loss") & evals.end_of_stage]
    assert loss[loss.stage == 1].value.item() < loss[loss.stage == 0].value.item()


def test_moe_model_runs_the_same_pipeline(tmp_path):
    _, out = _run(tmp_path, model="tiny-moe", steps_per_task=2, eval={"every": 0})
    evals = pd.read_parquet(out / "evals.parquet")
    assert set(evals[evals.end_of_stage].stage) == {0, 1, 2}


def test_the_manifest_records_the_model_weights_and_a_changed_model_is_not_resumed(finished, monkeypatch):
    import forgetting.models as models

    spec, out = finished
    recorded = json.loads((out / "manifest.json").read_text())["model"]
    assert recorded == models.model_fingerprint(spec.model) and len(recorded["weights_sha256"]) == 64
    assert recorded["source"].endswith(f"models/{spec.model}")
    other = {**recorded, "weights_sha256": "f" * 64}
    monkeypatch.setattr(seq, "model_fingerprint", lambda name: other)  # the model's files were replaced
    with pytest.raises(SpecError, match=r"the weights of 'tiny' changed since the run in .* began"):
        seq.run_experiment(spec, out, progress=False)
