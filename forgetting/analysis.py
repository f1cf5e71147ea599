"""The mechanism report of a finished run: drift, gradient alignment, curvature and head disruption,
measured on the run's own snapshots and task data, stored beside it with provenance.

For every training stage ``i >= 2`` (task ``i`` trained after the earlier tasks ``j < i``) and every
earlier task ``j``, on ``j``'s eval examples, between the snapshot before stage ``i`` (end of stage
``i-1``) and after it (end of stage ``i``):

- ``drift.parquet``: linear CKA per layer of the residual stream (hidden state after each block, mean
  over the example's tokens), before vs after (:func:`forgetting.mechanisms.drift.cka_by_layer`).
  With ``nulls=True``, also before vs two nulls (SCIENCE.md: a drift counts only where it stands clear
  of both), column ``null``: ``continue`` (task ``i-1`` trained further for as many steps as task
  ``i`` got) and ``reseed`` (task ``i-1`` re-trained from the same start with another seed); made and
  cached by :func:`forgetting.mechanisms.heads.null_snapshots`. The observed rows have ``null = ""``.
- ``gradients.parquet``: alignment of task ``j``'s loss gradient with task ``i``'s, at the snapshot
  before stage ``i``, per matrix, head, layer and for the whole model
  (:func:`forgetting.mechanisms.gradients.task_alignment`); cosine < 0 is a conflict.
- ``gradient_null.parquet``: the noise floor of that alignment, the cosine between the gradients of two
  disjoint halves of task ``j``'s own examples at the same snapshot
  (:func:`forgetting.mechanisms.gradients.split_half_null`): an old-vs-new cosine in a unit whose
  split-half cosine is near 0 cannot be read.
- ``curvature.parquet``: the top Hessian eigenvalue of task ``j``'s loss (all trainable weights,
  Lanczos) before and after, next to the loss itself: curvature rises with the loss (SCIENCE.md),
  so ``lambda_max / loss`` is reported too.
- ``heads.parquet``: per-head disruption before vs after (attention JS divergence, entropy change,
  output similarity, weight change; :func:`forgetting.mechanisms.heads.head_disruption`), column
  ``null`` as in ``drift`` (with ``nulls=True`` the same measures between before and each null).
- ``head_severity.parquet`` (with ``nulls=True``; empty otherwise): every head judged against the null
  heads by :func:`forgetting.mechanisms.heads.severe_heads` (alpha 0.05, standardised per layer): a
  head is severe only where it moved more than the continue and the reseed null both let heads move.

Every table carries ``stage`` (the stage whose training is analysed), ``new_task`` and ``old_task``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from forgetting import paths
from forgetting.errors import SpecError
from forgetting.profiles import code_fingerprint, load_run
from forgetting.results import atomic_write_json, atomic_write_table, provenance

ANALYSIS_DIR = "analysis"
TABLES = ("drift", "gradients", "gradient_null", "curvature", "heads", "head_severity")
# The modules whose code determines the analysis tables (besides the run itself): a change in any
# of them makes :func:`analysis_for` recompute instead of reusing stored tables.
ANALYSIS_CODE = ("analysis.py", "mechanisms")


@torch.no_grad()
def hidden_states(model, examples, batch_size: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Hidden states (layers+1 tensors of (n, seq, d)) and the attention mask of ``examples``."""
    chunks: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, len(examples), batch_size):
        rows = slice(start, start + batch_size)
        out = model(input_ids=examples.input_ids[rows], attention_mask=examples.attention_mask[rows],
                    output_hidden_states=True)
        chunks.append(out.hidden_states)
    return [torch.cat([c[layer] for c in chunks]) for layer in range(len(chunks[0]))], examples.attention_mask


def top_eigenvalue(model, examples, max_iter: int) -> dict:
    """The top Hessian eigenvalue (Lanczos, all trainable weights) of the mean target-token loss on
    ``examples``: ``{"loss", "lambda_max", "lambda_max_per_loss"}``."""
    from forgetting.mechanisms.landscape import hessian_eigenvalues
    from forgetting.train.loop import target_loss_sum

    n_tokens = int((examples.labels[:, 1:] != -100).sum())
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    loss_fn = lambda: target_loss_sum(model, examples, device) / n_tokens  # noqa: E731
    with torch.no_grad():
        loss = float(loss_fn())
    top = float(hessian_eigenvalues(loss_fn, params, k=1, max_iter=max_iter, tol=1e-3)[0])
    return {"loss": loss, "lambda_max": top, "lambda_max_per_loss": top / loss if loss > 0 else float("nan")}


def _all_stages(run) -> list[int]:
    """Every stage with an earlier task: 2..T."""
    from forgetting.experiments import parse_spec

    return list(range(2, len(parse_spec(run.manifest["spec"]).task_list()) + 1))


def _head_severity(heads: pd.DataFrame) -> pd.DataFrame:
    """:func:`severe_heads` for each (stage, old task): observed rows (``null == ""``) against the null rows."""
    from forgetting.mechanisms.heads import COMBINED_METRICS, severe_heads

    parts = []
    for (stage, new_task, old_task), group in heads.groupby(["stage", "new_task", "old_task"], sort=True):
        observed = group[group["null"] == ""].drop(columns=["stage", "new_task", "old_task", "null"])
        null = group[group["null"] != ""].drop(columns=["stage", "new_task", "old_task"])
        combine = [m for m in COMBINED_METRICS if m in set(observed["metric"])]
        parts.append(severe_heads(observed, null, combine=combine).assign(stage=stage, new_task=new_task, old_task=old_task))
    return pd.concat(parts, ignore_index=True)


def analyze_run(
    run_dir: str | Path,
    *,
    stages: list[int] | None = None,
    n_examples: int = 60,
    batch_size: int = 64,
    hessian_iters: int = 20,
    nulls: bool = False,
    progress: bool = True,
) -> Path:
    """Compute the four tables for ``stages`` (default: every stage from 2 on) and write them into
    ``run_dir/analysis/`` with a ``manifest.json`` (run spec hash, arguments, provenance). Returns that
    folder. ``n_examples`` caps each old task's eval examples."""
    from tqdm.auto import tqdm

    from forgetting.experiments import parse_spec
    from forgetting.mechanisms.drift import cka_by_layer
    from forgetting.mechanisms.gradients import split_half_null, task_alignment
    from forgetting.mechanisms.heads import head_activity, head_disruption, null_snapshots
    from forgetting.train.sequence import load_for_spec, prepare_tasks, snapshot_label
    from forgetting.train.snapshots import restore_snapshot

    run = load_run(run_dir)
    spec = parse_spec(run.manifest["spec"])
    names = spec.task_list()
    completed = run.evals["stage"].max()
    wanted = _all_stages(run) if stages is None else stages
    bad = [s for s in wanted if not 2 <= s <= completed]
    if bad:
        raise SpecError("--stages", f"{bad} not analysable; allowed: 2..{completed} (stages with an earlier task)")
    model, tokenizer = load_for_spec(spec)
    tasks = prepare_tasks(spec, tokenizer)
    snapshots = Path(run_dir) / "snapshots"
    label = lambda i: snapshot_label(i, "base" if i == 0 else names[i - 1])  # noqa: E731
    tables: dict[str, list[pd.DataFrame]] = {t: [] for t in TABLES}
    null_folders = {
        s: null_snapshots(run_dir, before=label(s - 1), after=label(s), kinds=("continue", "reseed"), progress=progress)
        for s in wanted
    } if nulls else {}
    jobs = [(s, j) for s in wanted for j in range(s - 1)]
    bar = tqdm(jobs, desc="analyze", disable=not progress or paths.quiet())
    for stage, j in bar:
        new, old = tasks[stage - 1], tasks[j]
        bar.set_postfix(stage=stage, old=old.name, refresh=False)
        examples = old.eval.select(slice(0, n_examples))
        keys = {"stage": stage, "new_task": new.name, "old_task": old.name}
        restore_snapshot(model, snapshots / label(stage - 1))
        model.eval()
        hidden_before, mask = hidden_states(model, examples, batch_size)
        heads_before = head_activity(model, examples, batch_size=batch_size, ablation=None)
        curvature = [{**keys, "snapshot": "before", **top_eigenvalue(model, examples, hessian_iters)}]
        tables["gradients"].append(task_alignment(
            model, examples, new.train, batch_size=batch_size, max_examples=n_examples).assign(**keys))
        tables["gradient_null"].append(split_half_null(model, examples, batch_size=batch_size).assign(**keys))
        restore_snapshot(model, snapshots / label(stage))
        model.eval()
        hidden_after, _ = hidden_states(model, examples, batch_size)
        tables["drift"].append(cka_by_layer(hidden_before, hidden_after, mask, readout="mean").assign(**keys, null=""))
        tables["heads"].append(head_disruption(heads_before, head_activity(model, examples, batch_size=batch_size,
                                                                           ablation=None)).assign(**keys, null=""))
        curvature.append({**keys, "snapshot": "after", **top_eigenvalue(model, examples, hessian_iters)})
        tables["curvature"].append(pd.DataFrame(curvature))
        for null_label, folder in null_folders.get(stage, {}).items():
            restore_snapshot(model, folder)
            model.eval()
            hidden_null, _ = hidden_states(model, examples, batch_size)
            kind = null_label.split("-seed")[0]
            tables["drift"].append(cka_by_layer(hidden_before, hidden_null, mask, readout="mean").assign(**keys, null=kind))
            heads_null = head_activity(model, examples, batch_size=batch_size, ablation=None)
            tables["heads"].append(head_disruption(heads_before, heads_null).assign(**keys, null=kind))
    tables["head_severity"] = [_head_severity(pd.concat(tables["heads"], ignore_index=True))] if nulls else [pd.DataFrame()]
    out = Path(run_dir) / ANALYSIS_DIR
    for name, parts in tables.items():
        atomic_write_table(out / f"{name}.parquet", pd.concat(parts, ignore_index=True))
    atomic_write_json(out / "manifest.json", {
        "run_spec_hash": run.manifest["spec_hash"], "stages": wanted, "n_examples": n_examples,
        "hessian_iters": hessian_iters, "nulls": nulls, "tables": list(TABLES),
        "analysis_code": code_fingerprint(ANALYSIS_CODE), **provenance(),
    })
    return out


def load_analysis(run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The tables written by :func:`analyze_run`, by name."""
    folder = Path(run_dir) / ANALYSIS_DIR
    if not (folder / "manifest.json").is_file():
        raise SpecError("DIR", f"{run_dir} has no analysis; run `forgetting analyze {run_dir}`")
    return {name: pd.read_parquet(folder / f"{name}.parquet") for name in TABLES}


def _analysis_is_current(folder: Path, wanted: dict) -> bool:
    """Whether ``folder/analysis`` was made with the ``wanted`` arguments by the current mechanism code."""
    from forgetting.results import read_json

    manifest = folder / ANALYSIS_DIR / "manifest.json"
    if not manifest.is_file():
        return False
    stored = read_json(manifest)
    return (all(stored.get(k) == v for k, v in wanted.items())
            and stored.get("analysis_code") == code_fingerprint(ANALYSIS_CODE)
            and all((manifest.parent / f"{t}.parquet").is_file() for t in TABLES))


def analysis_for(
    run_dir: str | Path,
    *,
    stages: list[int] | None = None,
    n_examples: int = 60,
    hessian_iters: int = 20,
    nulls: bool = True,
    progress: bool = True,
    stored_only: bool = False,
) -> dict[str, pd.DataFrame]:
    """The analysis tables of ``run_dir``: read back when a stored analysis was made with the same
    arguments by the same mechanism code, else computed by :func:`analyze_run` (and stored);
    ``stored_only=True`` raises :class:`LookupError` instead of computing.

    A published run (tables only, :mod:`forgetting.publish`) whose tables are stale is re-run into
    the cache and analysed there. This is what chapters call: the first chapter that needs the report
    pays for it, later ones read it.
    """
    from forgetting.publish import current_copy, with_weights

    run_dir = Path(run_dir)
    wanted = {"stages": _all_stages(load_run(run_dir)) if stages is None else list(stages),
              "n_examples": n_examples, "hessian_iters": hessian_iters, "nulls": nulls}
    stored = current_copy(run_dir, lambda folder: _analysis_is_current(folder, wanted))
    if stored is not None:
        return load_analysis(stored)
    if stored_only:
        raise LookupError(f"{run_dir}: no stored analysis made by the current code with these arguments")
    source = with_weights(run_dir, progress=progress)
    analyze_run(source, stages=stages, n_examples=n_examples, hessian_iters=hessian_iters, nulls=nulls,
                progress=progress)
    return load_analysis(source)
