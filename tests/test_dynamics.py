"""forgetting.dynamics: the matched-loss comparison of the learning and the forgetting path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forgetting.dynamics import matched_loss
from forgetting.errors import SpecError


def _paths(seed: int, offset: float) -> pd.DataFrame:
    """A learning path with log lambda = 0.5 L (loss 3 -> 0.5) and a forgetting path ``offset`` off it."""
    rows = []
    for step, loss in enumerate([3.0, 2.0, 1.2, 0.8, 0.5]):
        rows += [{"path": "learning", "step": step, "measure": "old_loss", "value": loss},
                 {"path": "learning", "step": step, "measure": "lambda_max", "value": np.exp(0.5 * loss)}]
    for step, loss in zip([0, 5, 10, 20], [0.5, 1.0, 2.5, 3.5]):  # 3.5: beyond the learning path's range
        lam = np.exp(0.5 * loss + (offset if step else 0.0))
        rows += [{"path": "forgetting", "step": step, "measure": "old_loss", "value": loss},
                 {"path": "forgetting", "step": step, "measure": "lambda_max", "value": lam},
                 {"path": "forgetting", "step": step, "measure": "drift", "value": 0.1 * step}]
    return pd.DataFrame(rows).assign(layer=-1, seed=seed)


def test_matched_loss_per_seed_known_answer():
    table = matched_loss(pd.concat([_paths(0, -0.4), _paths(1, 0.2)], ignore_index=True)).set_index("seed")
    assert table.loc[0, "value"] == pytest.approx(-0.4) and table.loc[1, "value"] == pytest.approx(0.2)
    # step 0 (the learning path's own end point) and the loss 3.5 outside [0.5, 3] are not matched
    assert (table["n_matched"] == 2).all() and (table["n_points"] == 3).all()
    assert (table["loss_low"] == 1.0).all() and (table["loss_high"] == 2.5).all()


def test_matched_loss_needs_the_learning_path():
    df = _paths(0, 0.0)
    with pytest.raises(SpecError, match="learning"):
        matched_loss(df[df.path == "forgetting"])
