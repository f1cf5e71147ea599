"""A run's snapshot as a Hugging Face checkpoint that ``from_pretrained`` opens without this package.

A snapshot keeps only the trainable tensors under the names this package's model object gives them
(:mod:`forgetting.runs.snapshots`): small and fast to resume from, but not a checkpoint other tools read.
:func:`export_snapshot` rebuilds the spec's model with the snapshot's weights and saves it the way
transformers and peft do:

- **full fine-tuning**: ``OUT/`` is a complete model folder (``config.json``, ``model.safetensors``,
  the tokenizer), opened with ``AutoModelForCausalLM.from_pretrained(OUT)``;
- **LoRA**: ``OUT/`` is the adapter (``adapter_config.json``, ``adapter_model.safetensors``) and
  ``OUT/base/`` the base model it was trained on, so
  ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(OUT / "base"), OUT)`` rebuilds it
  (``adapter_config.json`` names the base folder by its absolute path, which peft's ``AutoPeftModel``
  follows); ``merge=True`` instead writes one full model with the adapter merged into its weights.

The weights are the snapshot's, bit for bit. The package runs its models with eager attention; loaded
with ``attn_implementation="eager"`` the checkpoint gives the same logits bit for bit, and with
transformers' default (sdpa) within a few 1e-6 on the tiny model.

``OUT/forgetting_snapshot.json`` says where the checkpoint came from: the run folder, its spec hash
and seed, the snapshot's label, stage, task and step, and the sha256 of the snapshot's weights file.
The run folder is checked first (:func:`forgetting.runs.checksums.check_files`); the checkpoint is
written into a temporary folder and renamed into place, so a failed export leaves nothing.
"""

from __future__ import annotations

from pathlib import Path

from forgetting.errors import SpecError
from forgetting.files import atomic_dir, atomic_write_json, read_json
from forgetting.models import load_model
from forgetting.runs.checksums import check_files
from forgetting.runs.integrity import file_sha256
from forgetting.runs.run import Run, SnapshotRef
from forgetting.runs.snapshots import WEIGHTS

PROVENANCE = "forgetting_snapshot.json"
BASE = "base"  # the sub-folder of a LoRA export that holds its base model


def _is_peft(model) -> bool:
    from peft import PeftModel  # deferred: peft is imported only where a LoRA model is exported

    return isinstance(model, PeftModel)


def export_snapshot(run_dir: str | Path | Run, snapshot: SnapshotRef, out: str | Path, *, merge: bool = False) -> Path:
    """Write snapshot ``snapshot`` (a stage number or a label) of a run as a Hugging Face checkpoint.

    Args:
        run_dir: a run folder with its snapshots (or an open :class:`~forgetting.runs.run.Run`).
        snapshot: the stage whose end it marks (``0`` = the base model) or its label.
        out: a folder that does not exist yet or is empty.
        merge: for a LoRA run, one full model with the adapter merged (``W + (alpha / r) B A``)
            instead of the adapter and its base; ignored for full fine-tuning.

    Returns:
        ``out``.

    Raises:
        SpecError: on ``out`` (not empty), on a folder without snapshots, or on an unknown snapshot
            (the message lists the labels there).
        DamagedFile: when a file of the run folder differs from its record.
    """
    run = run_dir if isinstance(run_dir, Run) else Run.open(run_dir)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SpecError("--out", f"{out} exists and is not an empty folder; choose another folder")
    if not run.has_weights:
        raise SpecError("DIR", f"{run.folder} has no snapshots (a published copy keeps its tables only)")
    check_files(run.folder)
    folder = run.snapshot_folder(snapshot)
    info = run.snapshot_info(snapshot)
    model = run.model_at(snapshot)
    lora = _is_peft(model)
    with atomic_dir(out) as tmp:
        if lora and merge:
            import copy  # deferred: only a merged export copies the model

            copy.deepcopy(model).merge_and_unload().save_pretrained(tmp)
        elif lora:
            base, tokenizer = load_model(run.spec.model, trust_remote_code=run.spec.trust_remote_code)  # no adapter
            base.save_pretrained(tmp / BASE)
            tokenizer.save_pretrained(tmp / BASE)
            config = model.peft_config["default"]
            named = config.base_model_name_or_path
            config.base_model_name_or_path = str(tmp / BASE)  # peft reads the base's config while it saves
            try:
                model.save_pretrained(tmp)
            finally:
                config.base_model_name_or_path = named  # the run's shared model object stays as it was
            adapter = read_json(tmp / "adapter_config.json")
            atomic_write_json(tmp / "adapter_config.json", {**adapter, "base_model_name_or_path": str((out / BASE).resolve())})
        else:
            model.save_pretrained(tmp)
        run.tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / PROVENANCE, {
            "run": str(run.folder.resolve()), "spec_hash": run.manifest.get("spec_hash"), "seed": run.seed,
            "snapshot": info.label, "stage": info.stage, "task": info.task, "step": info.step,
            "weights_sha256": file_sha256(folder / WEIGHTS), "merged": bool(merge and lora),
            "method": run.spec.finetune.method,
        })
    return out
