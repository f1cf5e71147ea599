"""Experiment specs: validation names the field and what is allowed; hashes are stable."""

from __future__ import annotations

import pytest
import yaml

from forgetting.errors import SpecError
from forgetting.spec import load_spec, parse_spec
from forgetting.paths import SPECS_DIR
from tests.conftest import small_spec


def test_shipped_specs_are_valid():
    for path in SPECS_DIR.glob("*.yaml"):
        spec = load_spec(path)
        assert spec.task_list()


def test_hash_is_stable_and_sensitive():
    a, b = parse_spec(small_spec()), parse_spec(small_spec())
    assert a.hash() == b.hash() and len(a.hash()) == 12
    assert parse_spec(small_spec(seed=1)).hash() != a.hash()
    # defaults are part of the hash: spelling out a default does not change it
    assert parse_spec({**small_spec(), "grad_accum": 1}).hash() == a.hash()


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"stepz_per_task": 3}, "stepz_per_task", "unknown key; did you mean steps_per_task? allowed here: name, model"),
        ({"optimizer": {"lr": -1}}, "optimizer.lr", "greater than 0"),
        ({"optimizer": {"lrr": 0.1}}, "optimizer.lrr", "allowed here: lr, weight_decay"),
        ({"optimizer": {"schedule": "step"}}, "optimizer.schedule", "'linear', 'cosine' or 'constant'"),
        ({"batch_size": 0}, "batch_size", "greater than or equal to 1"),
        ({"sequence": "defualt"}, "sequence", "allowed: default, similar"),
        ({"sequence": ["recall_city", "recal_job"]}, "sequence", "unknown task(s) 'recal_job'; allowed: recall_city"),
        ({"finetune": {"method": "qlora"}}, "finetune.method", "allowed: full, lora"),
        ({"model": "not a model"}, "model", "neither an embedded model (tiny, tiny-moe)"),
        ({"epochs_per_task": 2}, "spec", "exactly one of steps_per_task or epochs_per_task"),
        ({"batch_size": 6, "grad_accum": 4}, "spec", "must be a multiple of grad_accum"),
        ({"name": "has space"}, "name", "should match pattern"),
    ],
)
def test_bad_values_name_the_field(change, field, says):
    with pytest.raises(SpecError) as info:
        parse_spec({**small_spec(), **change})
    assert info.value.field == field
    assert says in str(info.value)


def test_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="must be a mapping of keys to values, got list"):
        load_spec(path)


def test_broken_yaml_says_where(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nsequence: [a, b\n")
    with pytest.raises(SpecError, match=r"not valid YAML at line \d+"):
        load_spec(path)


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "nope.yaml")


def test_yaml_round_trip(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(small_spec()))
    assert load_spec(path) == parse_spec(small_spec())
