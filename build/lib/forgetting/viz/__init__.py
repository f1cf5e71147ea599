"""Charts for the book and for live kernels.

- :mod:`forgetting.viz.offline`: the Altair renderer that works with no network (``offline.enable()``).
- :mod:`forgetting.viz.charts`: the performance matrix R, forgetting curves, layer x head heatmaps,
  all Altair with params bound to selects and sliders, data embedded.
- :mod:`forgetting.viz.explorer`: the ipywidgets layer x head explorer for live kernels, which recomputes
  head disruption from a run's snapshots on every choice (imports torch; not imported here).

Importing this package does not import torch.
"""

from __future__ import annotations

from forgetting.viz import offline
from forgetting.viz.charts import (
    forgetting_curves,
    layer_head_heatmap,
    r_matrix_heatmap,
    r_matrix_table,
    stage_boundaries,
)

__all__ = [
    "forgetting_curves",
    "layer_head_heatmap",
    "offline",
    "r_matrix_heatmap",
    "r_matrix_table",
    "stage_boundaries",
]
