"""Chapter 04 (loss-landscape flattening): its exercise checkers and its charts.

Checkers must accept a right answer and reject the typical slips with the message that teaches the
fix; charts must carry the right rows, params and bindings in their Vega-Lite spec and render.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import vl_convert as vlc

from forgetting.exercises import ExerciseFeedback
from forgetting.exercises.landscape import check_hutchinson, check_top_eigenvalue
from forgetting.mechanisms.landscape import plane_2d
from forgetting.viz import landscape as vz

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# ----------------------------------------------------------------------------------------------
# exercise: top eigenvalue by power iteration
# ----------------------------------------------------------------------------------------------


def shifted_power(A, n_iter=200):
    c = np.abs(A).sum(axis=1).max()
    B = A + c * np.eye(len(A))
    v = np.random.default_rng(0).normal(size=len(A))
    for _ in range(n_iter):
        v = B @ v
        v /= np.linalg.norm(v)
    return float(v @ A @ v)


def plain_power(A, n_iter=200):
    v = np.random.default_rng(0).normal(size=len(A))
    for _ in range(n_iter):
        v = A @ v
        v /= np.linalg.norm(v)
    return float(v @ A @ v)


def norm_power(A, n_iter=200):
    v = np.random.default_rng(0).normal(size=len(A))
    for _ in range(n_iter):
        w = A @ v
        v = w / np.linalg.norm(w)
    return float(np.linalg.norm(A @ v))


def test_top_eigenvalue_accepts_shifted_power_iteration_and_lanczos_like_answers():
    assert "Correct" in check_top_eigenvalue(shifted_power)
    assert "Correct" in check_top_eigenvalue(lambda A, n_iter=200: float(np.linalg.eigvalsh(A)[-1]))


def test_top_eigenvalue_rejects_plain_power_iteration_naming_the_magnitude_trap():
    with pytest.raises(ExerciseFeedback, match="MAGNITUDE"):
        check_top_eigenvalue(plain_power)


def test_top_eigenvalue_rejects_the_norm_that_loses_the_sign():
    with pytest.raises(ExerciseFeedback, match="loses the sign"):
        check_top_eigenvalue(norm_power)


def test_top_eigenvalue_rejects_the_shifted_value_and_arrays():
    def unshifted(A, n_iter=200):
        return shifted_power(A, n_iter) + np.abs(A).sum(axis=1).max()

    with pytest.raises(ExerciseFeedback, match="SHIFTED"):
        check_top_eigenvalue(unshifted)
    with pytest.raises(ExerciseFeedback, match="array"):
        check_top_eigenvalue(lambda A, n_iter=200: np.linalg.eigvalsh(A))


def test_top_eigenvalue_cases_have_a_dominant_negative_eigenvalue():
    from forgetting.exercises.landscape import EIGEN_CASES

    assert any(abs(min(e)) > max(e) for _, e in EIGEN_CASES)


# ----------------------------------------------------------------------------------------------
# exercise: Hutchinson's trace
# ----------------------------------------------------------------------------------------------


def hutchinson(matvec, dim, m, seed=0):
    rng = np.random.default_rng(seed)
    return sum(float(g @ matvec(g)) for g in rng.choice([-1.0, 1.0], size=(m, dim))) / m


def test_hutchinson_accepts_the_estimator():
    assert "Correct" in check_hutchinson(hutchinson)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda mv, dim, m, seed=0: hutchinson(mv, dim, m, seed) * m, "m times too large"),
        (lambda mv, dim, m, seed=0: hutchinson(mv, dim, m, seed) / dim, "divided by the dimension"),
        (lambda mv, dim, m, seed=0: hutchinson(mv, dim, m - 1, seed), "exactly m"),
    ],
)
def test_hutchinson_rejects_typical_slips(wrong, message):
    with pytest.raises(ExerciseFeedback, match=message):
        check_hutchinson(wrong)


def test_hutchinson_returning_every_sample_is_told_to_average_them():
    def samples(mv, dim, m, seed=0):
        gs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(m, dim))
        return np.array([g @ mv(g) for g in gs])

    with pytest.raises(ExerciseFeedback, match=r"return one number \(the trace estimate\): the mean of g @ matvec\(g\)"):
        check_hutchinson(samples)


def test_hutchinson_rejects_the_frobenius_norm_when_it_uses_m_products():
    def frobenius(mv, dim, m, seed=0):
        gs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(m, dim))
        return sum(float(np.sum(mv(g) ** 2)) for g in gs) / m

    with pytest.raises(ExerciseFeedback, match="F\\^2"):
        check_hutchinson(frobenius)


# ----------------------------------------------------------------------------------------------
# charts
# ----------------------------------------------------------------------------------------------


def _curvature() -> pd.DataFrame:
    rows = []
    for stage, new, old, lb, la, mb, ma in [(2, "B", "A", 0.2, 5.0, 130.0, 900.0), (3, "C", "A", 5.0, 3.0, 900.0, 700.0),
                                            (3, "C", "B", 0.6, 3.0, 180.0, 540.0)]:
        for snap, loss, lam in (("before", lb, mb), ("after", la, ma)):
            rows.append({"stage": stage, "new_task": new, "old_task": old, "snapshot": snap, "loss": loss,
                         "lambda_max": lam, "lambda_max_per_loss": lam / loss})
    return pd.DataFrame(rows)


def _datasets(spec: dict) -> list[list[dict]]:
    return [v for v in spec.get("datasets", {}).values()]


def _render(spec: dict) -> None:
    png = vlc.vegalite_to_png(spec, scale=1)
    assert png.startswith(PNG_MAGIC) and len(png) > 3000


def test_curvature_table_is_long_with_pairs_snapshots_and_measures():
    table = vz.curvature_table(_curvature())
    assert len(table) == 3 * 2 * 3
    assert set(table["measure"]) == set(vz.CURVATURE_MEASURES)
    row = table[(table.pair == "A after B (stage 2)") & (table.snapshot == "after") & (table.measure == "lambda_max")]
    assert row["value"].item() == 900.0


def test_curvature_table_averages_seeds():
    two = pd.concat([_curvature().assign(seed=0), _curvature().assign(seed=1, lambda_max=lambda d: d.lambda_max * 3)])
    table = vz.curvature_table(two)
    row = table[(table.pair == "A after B (stage 2)") & (table.snapshot == "after") & (table.measure == "lambda_max")]
    assert row["value"].item() == pytest.approx(1800.0) and row["n"].item() == 2


def test_curvature_change_has_a_measure_select_and_renders():
    spec = vz.curvature_change(_curvature(), title="t").to_dict()
    params = {p["name"]: p for p in spec["params"]}
    assert params["measure"]["bind"]["input"] == "select"
    assert params["measure"]["bind"]["options"] == list(vz.CURVATURE_MEASURES)
    sizes = sorted(len(d) for d in _datasets(spec))
    assert sizes == [9, 18]  # the wide table (pair x measure) for the rules, the long one for the points
    _render(spec)


def test_curvature_table_rejects_missing_columns():
    with pytest.raises(ValueError, match="lambda_max"):
        vz.curvature_table(_curvature().drop(columns="lambda_max"))


def _plane() -> pd.DataFrame:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1, bias=False)
    x = torch.randn(20, 3)
    ya, yb = x @ torch.tensor([1.0, 0.0, 0.0]), x @ torch.tensor([0.0, 1.0, 0.0])
    fns = {"A": lambda: ((net(x).squeeze(-1) - ya) ** 2).mean(), "B": lambda: ((net(x).squeeze(-1) - yb) ** 2).mean()}
    o = {"weight": torch.zeros(1, 3)}
    a = {"weight": torch.tensor([[1.0, 0.0, 0.0]])}
    b = {"weight": torch.tensor([[0.0, 1.0, 0.0]])}
    return plane_2d(net, o, a, b, fns, grid=5)


def test_plane_table_adds_the_sum_and_cell_edges():
    plane = _plane()
    table = vz.plane_table(plane)
    assert len(table) == 5 * 5 * 3
    cell = table[(table.task == "sum")].iloc[7]
    parts = plane[(plane.x == cell.x) & (plane.y == cell.y)]["loss"].sum()
    assert cell.loss == pytest.approx(parts)
    assert np.allclose(table.x1 - table.x0, table.x1.iloc[0] - table.x0.iloc[0])


def test_plane_heatmap_marks_the_three_snapshots_and_has_a_task_select():
    plane = _plane()
    spec = vz.plane_heatmap(plane, point_labels={"origin": "base"}).to_dict()
    params = {p["name"]: p for p in spec["params"]}
    assert params["plane_task"]["bind"]["options"] == ["A", "B", "sum"]
    assert params["plane_task"]["value"] == "sum"
    points = next(d for d in _datasets(spec) if d and "name" in d[0])
    assert {p["name"] for p in points} == {"base", "a", "b"}
    base = next(p for p in points if p["name"] == "base")
    assert (base["x"], base["y"]) == (0.0, 0.0)
    _render(spec)


def test_curvature_path_chart_and_taylor_and_interpolation_charts_render():
    path = pd.DataFrame({"path": ["p"] * 3 + ["q"] * 3, "alpha": [0, 0.5, 1] * 2, "loss": [0.2, 1.0, 5.0, 0.3, 2.0, 6.0],
                         "lambda_max": [100, 300, 900, 500, 2000, 8000], "lambda_min": [-10, -200, -800, -5, -50, -100]})
    spec = vz.curvature_path_chart(path, marks=pd.DataFrame({"loss": [5.0], "label": ["end"]})).to_dict()
    long = max(_datasets(spec), key=len)
    assert len(long) == 6 * len(vz.PATH_MEASURES)
    flipped = [r for r in long if r["measure"] == "abs_lambda_min"]
    assert sorted(r["value"] for r in flipped)[-1] == 800
    _render(spec)
    taylor = pd.DataFrame({"t": [0.1, 1.0], "first_order": [0.05, 0.5], "predicted": [0.06, 1.0], "actual": [0.07, 3.0]})
    spec = vz.taylor_chart(taylor).to_dict()
    assert len(max(_datasets(spec), key=len)) == 6
    _render(spec)
    line = pd.DataFrame({"alpha": [0, 0.5, 1] * 2, "task": ["A"] * 3 + ["B"] * 3, "loss": [0.1, 1, 5, 6, 1, 0.2]})
    _render(vz.interpolation_chart(line, labels={0.0: "after A", 1.0: "after B"}).to_dict())
