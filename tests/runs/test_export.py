"""Snapshots exported as Hugging Face checkpoints (forgetting.runs.export): opened by transformers and
peft alone, they give the same logits as the package's own model at that snapshot."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from forgetting.cli import main
from forgetting.errors import DamagedFile, SpecError
from forgetting.runs import Run
from forgetting.runs.checksums import record_files
from forgetting.runs.export import BASE, PROVENANCE, export_snapshot
from forgetting.runs.integrity import file_sha256
from forgetting.spec import parse_spec
from forgetting.train.sequence import run_experiment
from tests.conftest import small_spec

PROMPT = "The city of"


@pytest.fixture(scope="module", params=["tiny", "tiny-moe"])
def full_run(request, tmp_path_factory):
    spec = parse_spec(small_spec(eval={"every": 0}, model=request.param))
    return run_experiment(spec, tmp_path_factory.mktemp("full") / "run", progress=False)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    spec = small_spec(eval={"every": 0}, finetune={"method": "lora", "lora": {"r": 4, "alpha": 8}})
    return run_experiment(parse_spec(spec), tmp_path_factory.mktemp("lora") / "run", progress=False)


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def test_a_full_fine_tuning_snapshot_opens_with_from_pretrained(full_run, tmp_path):
    run = Run.open(full_run)
    out = export_snapshot(run, 2, tmp_path / "ckpt")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    ours = run.model_at(2)
    theirs = model.state_dict()
    assert all(torch.equal(theirs[name], tensor) for name, tensor in ours.state_dict().items())  # bit for bit
    assert set(theirs) == set(ours.state_dict())
    expected = _logits(ours, run.tokenizer)
    assert torch.allclose(_logits(model, tokenizer), expected, atol=1e-5)  # transformers' default attention (sdpa)
    eager = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")  # the package's attention
    assert torch.equal(_logits(eager, tokenizer), expected)
    assert not torch.equal(expected, _logits(run.model_at(0), run.tokenizer))  # the snapshot, not the base
    provenance = json.loads((out / PROVENANCE).read_text())
    assert provenance["snapshot"] == run.stage_label(2) and provenance["stage"] == 2
    assert provenance["weights_sha256"] == file_sha256(run.snapshot_folder(2) / "weights.safetensors")


def test_a_lora_snapshot_opens_with_peft_and_merged_with_from_pretrained(lora_run, tmp_path):
    run = Run.open(lora_run)
    expected = _logits(run.model_at(1), run.tokenizer)
    out = export_snapshot(run, 1, tmp_path / "adapter")
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    base = AutoModelForCausalLM.from_pretrained(out / BASE)
    adapted = PeftModel.from_pretrained(base, out)
    assert torch.allclose(_logits(adapted, AutoTokenizer.from_pretrained(out)), expected, atol=1e-5)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str((out / BASE).resolve())
    merged = export_snapshot(run, 1, tmp_path / "merged", merge=True)
    assert not (merged / "adapter_config.json").exists()
    assert torch.allclose(_logits(AutoModelForCausalLM.from_pretrained(merged), run.tokenizer), expected, atol=1e-4)


def test_bad_requests_are_refused_before_anything_is_written(full_run, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("x")
    with pytest.raises(SpecError, match="is not an empty folder"):
        export_snapshot(full_run, 1, taken)
    with pytest.raises(SpecError, match="have: stage00-base"):
        export_snapshot(full_run, "stage09-nothing", tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_the_command_line_exports_and_refuses_an_altered_snapshot(full_run, tmp_path, capsys):
    run = shutil.copytree(full_run, tmp_path / "run")
    record_files(run)  # the record `forgetting run` writes
    assert main(["export", str(run), "1", "--out", str(tmp_path / "one")]) == 0
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "one") is not None
    weights = Run.open(run).snapshot_folder(1) / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x5A
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["export", str(run), "1", "--out", str(tmp_path / "two")]) == 2
    assert f"{weights}: has other bytes" in capsys.readouterr().err
    assert not (tmp_path / "two").exists()
    with pytest.raises(DamagedFile):
        export_snapshot(run, 1, tmp_path / "three")
