"""The layer x head explorer: an ipywidgets view that *recomputes* head disruption from a run's snapshots.

Pick a stage (the new task it trained), an old task trained before it, a measure, a layer, a head and
an example; the explorer records every head of the snapshots before and after that stage on the old
task's examples (:func:`forgetting.mechanisms.heads.head_activity`), measures the disruption between
the two records (:func:`forgetting.mechanisms.heads.head_disruption`) and redraws

- the **head map**: the chosen measure for every layer x head of that pair
  (:func:`forgetting.viz.heads.head_disruption_heatmap`, one pair, one measure), and
- the **attention pattern** of the chosen layer, head and example before and after
  (:func:`forgetting.viz.heads.attention_pattern_chart`).

Nothing is precomputed: each (stage, old task) pair is recorded on first choice (a second or two for
the embedded model on a CPU) and kept, so moving back to a pair is instant. The head map shows the raw
measure of one run, not the null-calibrated severity of the mechanism report (the ``combined_z``
column needs the null snapshots; chapter 05's static chart has it).

Live kernels only (Jupyter, Colab): callbacks need a kernel. The static book shows
:func:`~forgetting.viz.heads.attention_pattern_chart` and says that the explorer runs after launch.
The state a test or a reader can inspect after each callback: ``explorer.disruption`` (the long
table of the current pair), ``explorer.head_map`` and ``explorer.pattern`` (the charts last drawn) and
:attr:`HeadExplorer.recorded` (the pairs recorded so far).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from forgetting.errors import SpecError
from forgetting.mechanisms.heads import HeadRecord, head_activity, head_disruption
from forgetting.viz.heads import HEAD_MEASURES, attention_pattern_chart, head_disruption_heatmap, pair_label

#: The measures the explorer offers, those :func:`~forgetting.mechanisms.heads.head_disruption` gives
#: for one pair without nulls (the combined z needs the null snapshots).
EXPLORER_MEASURES = tuple(m for m in HEAD_MEASURES if m != "combined_z")


class HeadExplorer:
    """A layer x head explorer over the stages of ``run`` (a :class:`forgetting.runs.run.Run` whose
    snapshots are on disk: use :func:`forgetting.profiles.with_snapshots` for a published run).

    Args:
        run: the run; its end-of-stage snapshots ``0..T`` are read.
        n_examples: old-task evaluation examples recorded per pair (the first ``n_examples``).
        stage, old_task, measure, layer, head: where the explorer opens (default: stage 2, its first
            old task, the first of :data:`EXPLORER_MEASURES`, layer 0, head 0).

    ``explorer.widget`` is the ``VBox`` to display; ``explorer.choose(stage=..., ...)`` sets controls
    as a reader would (each change runs the same callback a click runs).
    """

    def __init__(self, run, *, n_examples: int = 8, stage: int = 2, old_task: str | None = None,
                 measure: str = EXPLORER_MEASURES[0], layer: int = 0, head: int = 0):
        import ipywidgets as widgets  # deferred: only live kernels need ipywidgets loaded

        self.run = run
        self.names = list(run.task_names)
        if len(self.names) < 2:
            raise SpecError("run", f"{run.folder}: the explorer needs at least two stages; it has {len(self.names)}")
        last = max(run.stages)
        problems = []
        if not 2 <= stage <= last:
            problems.append(f"stage: {stage} not allowed; allowed: 2..{last} (a stage with an earlier task)")
        if measure not in EXPLORER_MEASURES:
            problems.append(f"measure: {measure!r} not allowed; allowed: {', '.join(EXPLORER_MEASURES)}")
        if n_examples < 1:
            problems.append(f"n_examples: {n_examples} not allowed; allowed: >= 1")
        if problems:
            raise SpecError("HeadExplorer", "; ".join(problems))
        self.n_examples = n_examples
        self._records: dict[tuple[int, str], tuple[HeadRecord, HeadRecord, list[list[str]]]] = {}
        self.disruption: pd.DataFrame | None = None
        self.head_map = None
        self.pattern = None

        stages = [(f"{s}: after {self.names[s - 1]}", s) for s in range(2, last + 1)]
        self.stage = widgets.Dropdown(options=stages, value=stage, description="stage")
        self.old_task = widgets.Dropdown(options=self._old_tasks(stage), description="old task")
        if old_task is not None:
            self.old_task.value = self._check_old_task(stage, old_task)
        self.measure = widgets.Dropdown(options=[(HEAD_MEASURES[m], m) for m in EXPLORER_MEASURES], value=measure,
                                        description="measure")
        self.layer = widgets.Dropdown(description="layer")
        self.head = widgets.Dropdown(description="head")
        self.example = widgets.IntSlider(value=0, min=0, max=0, description="example")
        self.status = widgets.HTML()
        self.map_out, self.pattern_out = widgets.Output(), widgets.Output()
        self._compute()
        L, H = self._current()[0].attention.shape[:2]
        self.layer.options, self.head.options = list(range(L)), list(range(H))
        self.layer.value, self.head.value = self._check_range("layer", layer, L), self._check_range("head", head, H)
        self._draw_map()
        self._draw_pattern()

        self.stage.observe(self._on_stage, names="value")
        self.old_task.observe(self._on_pair, names="value")
        self.measure.observe(lambda _: self._draw_map(), names="value")
        for control in (self.layer, self.head, self.example):
            control.observe(lambda _: self._draw_pattern(), names="value")
        self.widget = widgets.VBox([
            widgets.HBox([self.stage, self.old_task, self.measure]),
            self.status, self.map_out,
            widgets.HBox([self.layer, self.head, self.example]), self.pattern_out,
        ])

    # -- choices -----------------------------------------------------------------------------------

    def choose(self, **choices) -> HeadExplorer:
        """Set controls by name (``stage``, ``old_task``, ``measure``, ``layer``, ``head``, ``example``),
        in that order, as a reader would; returns the explorer."""
        order = ("stage", "old_task", "measure", "layer", "head", "example")
        unknown = sorted(set(choices) - set(order))
        if unknown:
            raise SpecError("choose", f"{', '.join(unknown)} not allowed; allowed: {', '.join(order)}")
        for name in order:
            if name in choices:
                getattr(self, name).value = choices[name]
        return self

    @property
    def recorded(self) -> list[tuple[int, str]]:
        """The (stage, old task) pairs recorded so far, in the order they were first chosen."""
        return list(self._records)

    def _old_tasks(self, stage: int) -> list[str]:
        return self.names[: stage - 1]

    def _check_old_task(self, stage: int, old_task: str) -> str:
        allowed = self._old_tasks(stage)
        if old_task not in allowed:
            raise SpecError("old_task", f"{old_task!r} not allowed at stage {stage}; allowed: {', '.join(allowed)}")
        return old_task

    @staticmethod
    def _check_range(name: str, value: int, n: int) -> int:
        if not 0 <= value < n:
            raise SpecError(name, f"{value} not allowed; allowed: 0..{n - 1}")
        return value

    # -- callbacks ---------------------------------------------------------------------------------

    def _on_stage(self, change) -> None:
        previous = self.old_task.value
        options = self._old_tasks(change["new"])
        # Setting the options resets the value (one callback); keep the old task where it still exists.
        with self.old_task.hold_trait_notifications():
            self.old_task.options = options
            self.old_task.value = previous if previous in options else options[0]
        self._on_pair()

    def _on_pair(self, _=None) -> None:
        self._compute()
        self._draw_map()
        self._draw_pattern()

    # -- computing and drawing ---------------------------------------------------------------------

    def _current(self) -> tuple[HeadRecord, HeadRecord, list[list[str]]]:
        return self._records[(self.stage.value, self.old_task.value)]

    def _compute(self) -> None:
        """Record the current pair if new; set :attr:`disruption` (long: layer, head, kv_head, metric, value)."""
        stage, old = self.stage.value, self.old_task.value
        key = (stage, old)
        if key not in self._records:
            self.status.value = f"recording every head on {old!r} before and after stage {stage} ..."
            examples = self.run.task(old).eval.select(slice(0, self.n_examples))
            before = head_activity(self.run.model_at(stage - 1), examples, ablation=None)
            after = head_activity(self.run.model_at(stage), examples, ablation=None)
            tokenizer = self.run.tokenizer
            tokens = [tokenizer.convert_ids_to_tokens(ids[mask.bool()].tolist())
                      for ids, mask in zip(examples.input_ids, examples.attention_mask)]
            self._records[key] = (before, after, tokens)
        before, after, _ = self._records[key]
        self.disruption = head_disruption(before, after)
        self.example.max = before.n_examples - 1
        self.status.value = (f"stage {stage} trained {self.names[stage - 1]!r}; heads recorded on "
                             f"{before.n_examples} examples of {old!r} before and after it")

    def head_table(self) -> pd.DataFrame:
        """The current pair's disruption, one row per (layer, head) with one column per measure
        (the input of :func:`~forgetting.viz.heads.head_disruption_heatmap`)."""
        wide = self.disruption.pivot_table(index=["layer", "head"], columns="metric", values="value").reset_index()
        stage = self.stage.value
        wide["stage"] = stage
        wide["pair"] = pair_label(stage, self.names[stage - 1], self.old_task.value)
        return wide

    def _draw_map(self) -> None:
        from IPython.display import display  # deferred: IPython is there in every kernel, not in every install

        stage, old, measure = self.stage.value, self.old_task.value, self.measure.value
        self.head_map = head_disruption_heatmap(
            self.head_table(), measures=[measure], title=f"{HEAD_MEASURES[measure]}: {old} after stage {stage}",
            subtitle="one run, no null: raw change per head (chapter 05's static map calibrates it against the nulls)")
        self.map_out.clear_output(wait=True)
        with self.map_out:
            display(self.head_map)

    def _draw_pattern(self) -> None:
        from IPython.display import display  # deferred: as in _draw_map

        before, after, tokens = self._current()
        example = min(self.example.value, before.n_examples - 1)
        self.pattern = attention_pattern_chart(
            before, after, example, tokens[example], layer=self.layer.value, head=self.head.value,
            title=f"{self.old_task.value}, example {example}: attention before and after stage {self.stage.value}")
        self.pattern_out.clear_output(wait=True)
        with self.pattern_out:
            display(self.pattern)


def head_explorer(run, **options) -> object:
    """The explorer's widget (:class:`HeadExplorer` ``(run, **options).widget``), ready to ``display``."""
    return HeadExplorer(run, **options).widget


__all__: Sequence[str] = ["EXPLORER_MEASURES", "HeadExplorer", "head_explorer"]
