"""The worked examples of CONTRIBUTING.md run as written: the toy measure joins the mechanism report and
the dynamics through its one registration, and the toy intervention runs from a spec by name."""

from __future__ import annotations

import re

import pytest
import torch

from forgetting import measures, mitigations, paths
from forgetting.analysis import analysis_for
from forgetting.dynamics import dynamics_for
from forgetting.runs import Run
from forgetting.spec import parse_spec
from forgetting.train import run_experiment
from tests.conftest import small_spec

CONTRIBUTING = paths.REPO_ROOT / "CONTRIBUTING.md"


@pytest.fixture(scope="module")
def examples():
    blocks = re.findall(r"```python\n(.*?)```", CONTRIBUTING.read_text(), flags=re.S)
    assert len(blocks) == 2, "CONTRIBUTING.md should hold the two worked examples"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(CONTRIBUTING), "exec"), namespace)
    yield namespace
    measures.unregister("weight_norm")
    mitigations.unregister("scale_attention_gradient")


def test_the_toy_measure_joins_the_report_and_the_dynamics(examples, tmp_path):
    spec = parse_spec(small_spec(sequence=["recall_city", "recall_job"], snapshots={"every": 3}, eval={"every": 0}))
    run = Run.open(run_experiment(spec, tmp_path / "run", progress=False))
    norm = examples["weight_norm"]
    report = analysis_for(run.folder, n_examples=8, hessian_iters=3, nulls=False, progress=False)
    row = report["weight_norm"].iloc[0]
    assert (row.stage, row.old_task, row.new_task) == (2, "recall_city", "recall_job")
    assert row.before == pytest.approx(norm(run.model_at(1))) and row.after == pytest.approx(norm(run.model_at(2)))
    dyn = dynamics_for(run.folder, n_examples=8, hessian_iters=3, progress=False)
    traced = dyn[dyn.measure == "weight_norm"].sort_values("step")
    assert len(traced) == len(run.stage_snapshots(2))
    assert traced.value.iloc[-1] == pytest.approx(norm(run.model_at(2)))


def test_the_toy_intervention_runs_from_a_spec_by_name(examples, tmp_path):
    assert "scale_attention_gradient" in mitigations.names()
    frozen = parse_spec(small_spec(finetune={"mitigation": {"name": "scale_attention_gradient", "strength": 1.0}}))
    run = Run.open(run_experiment(frozen, tmp_path / "frozen", progress=False))
    base, after = run.snapshot(0), run.snapshot(2)
    attention = [k for k in base if ".self_attn." in k]
    assert attention and all(torch.equal(base[k], after[k]) for k in attention)  # attention never moved
    assert any(not torch.equal(base[k], after[k]) for k in base if ".mlp." in k)  # the rest trained
    with pytest.raises(Exception, match=r"finetune.mitigation.strength: 2.0 not allowed; allowed: 0 to 1"):
        run_experiment(parse_spec(small_spec(finetune={"mitigation": {"name": "scale_attention_gradient",
                                                                      "strength": 2.0}})),
                       tmp_path / "bad", progress=False)
