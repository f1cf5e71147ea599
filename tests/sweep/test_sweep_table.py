"""forgetting.sweep: the profile's sweep settings (tasks, seeds, steps, lr), sweep_table over seeds (rows,
forgetting_fraction, stored_only) and the claim-5 tests (primaries, Holm over the secondaries)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from forgetting.errors import SpecError
from forgetting.profiles import PROFILES, experiment_spec, sweep_settings
from forgetting.runs import Run
from forgetting.spec import parse_spec
from forgetting.stats import holm, pearson
from forgetting.sweep import SWEEP_COLUMNS, similarity_tests, sweep_spec, sweep_table
from forgetting.tasks.families import task_names
from tests.conftest import small_spec


def test_full_sweep_covers_every_family_with_three_seeds_and_quick_stays_small():
    full, quick = sweep_settings("full"), sweep_settings("quick")
    assert sorted(full["tasks"]) == sorted(task_names()) and len(full["tasks"]) == 12
    assert full["seeds"] == (0, 1, 2) and (full["steps"], full["lr"]) == (50, 2e-3)
    assert quick["seeds"] == (0,) and len(quick["tasks"]) == 4 and quick["lr"] is None
    spec = sweep_spec("recall_city", "sort", profile="full", seed=1)
    assert (spec.steps_per_task, spec.optimizer.lr, spec.seed) == (50, 2e-3, 1)
    assert sweep_spec("recall_city", "sort", profile="quick").optimizer == experiment_spec("quick").optimizer


def test_sweep_lr_replaces_the_spec_lr_only_without_a_base(monkeypatch):
    monkeypatch.setitem(PROFILES["quick"], "sweep", {**PROFILES["quick"]["sweep"], "lr": 5e-4})
    assert sweep_spec("recall_city", "sort", profile="quick").optimizer.lr == 5e-4
    base = experiment_spec("quick")
    assert sweep_spec("recall_city", "sort", profile="quick", base=base).optimizer.lr == base.optimizer.lr


def test_sweep_table_runs_every_pair_of_every_seed_then_reads_it_back(tmp_path, monkeypatch):
    import forgetting.sweep.pairs

    monkeypatch.setenv("FORGETTING_CACHE", str(tmp_path))  # a tiny sweep is never published
    monkeypatch.setattr(forgetting.sweep.pairs, "experiment_spec",  # the profile's spec, made tiny (seconds)
                        lambda profile, *, model=None, seed=None: parse_spec(small_spec(
                            seed=seed or 0, eval={"every": 0, "batch_size": 64, "heldout_corpus": False})))
    monkeypatch.setitem(PROFILES["quick"], "sweep", {"tasks": ("recall_city", "sort"), "steps": 3, "lr": 2e-3,
                                                     "seeds": (0, 1)})
    with pytest.raises(LookupError, match=r"4 of 4 sweep pairs are not stored.*recall_city->sort \(seed 0\)"):
        sweep_table("quick", progress=False, stored_only=True)
    table = sweep_table("quick", progress=False)
    assert list(table.columns) == list(SWEEP_COLUMNS)
    assert list(zip(table.seed, table.task_a, table.task_b)) == [
        (0, "recall_city", "sort"), (0, "sort", "recall_city"), (1, "recall_city", "sort"), (1, "sort", "recall_city")]
    assert (table.steps == 3).all()
    assert all(Run.open(r).spec.optimizer.lr == 2e-3 for r in table.run)  # the sweep's lr, not the spec's 3e-3
    gain = table.loss_a_base - table.loss_a_before
    assert (gain > 0).all()  # three steps already lower A's loss from the base model's
    np.testing.assert_allclose(table.forgetting_fraction, table.forgetting_loss / gain)
    assert table.loc[0, "loss_a_before"] != table.loc[2, "loss_a_before"]  # the seeds differ

    import forgetting.train.sequence

    monkeypatch.setattr(forgetting.train.sequence, "train_task", lambda *a, **k: pytest.fail("trained again"))
    pd.testing.assert_frame_equal(table, sweep_table("quick", progress=False, stored_only=True))


def _synthetic(n_tasks: int = 6, n_seeds: int = 2, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A sweep table (pairs x seeds) whose forgetting_loss is 2 fisher + noise, and its similarity table."""
    rng = np.random.default_rng(seed)
    tasks = [f"t{i}" for i in range(n_tasks)]
    sims, rows = [], []
    for a, b in itertools.permutations(tasks, 2):
        values = {"fisher": rng.uniform(), "gradient_cosine": rng.uniform(-1, 1), "token_overlap": rng.uniform()}
        sims += [{"task_a": a, "task_b": b, "measure": m, "layer": np.nan, "value": v} for m, v in values.items()]
        sims.append({"task_a": a, "task_b": b, "measure": "representation_layer", "layer": 1, "value": rng.uniform()})
        for s in range(n_seeds):
            loss = 2 * values["fisher"] + 0.1 * rng.normal()
            rows.append({"task_a": a, "task_b": b, "seed": s, "forgetting_loss": loss,
                         "forgetting_fraction": loss / 3 if (a, b) != ("t0", "t1") else np.nan,
                         "forgetting_answer": rng.uniform()})
    return pd.DataFrame(rows), pd.DataFrame(sims)


@pytest.mark.filterwarnings("ignore:groups. the observations do not form a complete sweep")  # the NaN fraction
def test_similarity_tests_primaries_and_holm_over_the_secondaries():
    pairs, sims = _synthetic()
    out = similarity_tests(pairs, sims, n_boot=300, n_perm=300)
    assert list(out[["claim", "predictor", "forgetting"]].itertuples(index=False, name=None))[:2] == [
        ("5", "fisher", "forgetting_loss"), ("5b", "gradient_conflict", "forgetting_loss")]
    assert out.primary.tolist() == [True, True] + [False] * 7  # 3 predictors x 3 measures, less the 2 primaries
    assert set(out.predictor) == {"fisher", "gradient_conflict", "token_overlap"}  # per-layer rows are not used
    mean = pairs.groupby(["task_a", "task_b"], sort=False)["forgetting_loss"].mean().reset_index()
    fisher = sims[sims.measure == "fisher"].merge(mean, on=["task_a", "task_b"])
    assert out.r[0] == pytest.approx(pearson(fisher["value"], fisher["forgetting_loss"]))
    assert out.r[0] > 0.9 and out.ci_low[0] > 0.5 and out.p_value[0] < 0.01
    grad = sims[sims.measure == "gradient_cosine"].merge(mean, on=["task_a", "task_b"])
    assert out.r[1] == pytest.approx(-pearson(grad["value"], grad["forgetting_loss"]))  # conflict = -cosine
    assert (out.p_holm[:2] == out.p_value[:2]).all()
    secondary = out[~out.primary]
    np.testing.assert_allclose(secondary.p_holm, holm(secondary.p_value))
    assert (out.n_seeds == 2).all() and (out.n_tasks == 6).all()
    fraction = out[(out.predictor == "fisher") & (out.forgetting == "forgetting_fraction")].iloc[0]
    assert fraction.n_pairs == 29  # the pair with NaN fraction is left out


def test_similarity_tests_bad_input():
    pairs, sims = _synthetic()
    with pytest.raises(SpecError, match="missing measure.*gradient_cosine"):
        similarity_tests(pairs, sims[sims.measure != "gradient_cosine"])
    with pytest.raises(SpecError, match="missing column.*forgetting_fraction"):
        similarity_tests(pairs.drop(columns="forgetting_fraction"), sims)
