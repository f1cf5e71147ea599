"""Spec files as load_spec reads them (forgetting.spec): every problem at once, the nearest
allowed name for a typo, size and alias limits, and the spec fuzz table through ``forgetting run``."""

from __future__ import annotations

import pytest
import yaml

from forgetting.cli import main
from forgetting.errors import SpecError
from forgetting.spec import _LOADER, MAX_ALIASES, MAX_SPEC_BYTES, load_spec, parse_spec, spec_problems
from tests.conftest import small_spec


def _write(tmp_path, data) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def test_a_valid_file_gives_the_spec_of_its_data(tmp_path):
    path = _write(tmp_path, small_spec())
    assert load_spec(path).hash() == parse_spec(small_spec()).hash()


def test_the_c_loader_is_used_where_pyyaml_has_it():
    assert _LOADER is getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    assert issubclass(_LOADER, (yaml.SafeLoader, getattr(yaml, "CSafeLoader", yaml.SafeLoader)))


def test_three_problems_are_all_named_and_the_typo_comes_first_with_its_nearest_name(tmp_path):
    data = {**small_spec(), "modle": "tiny", "steps_per_task": 0, "batch_size": -3}
    del data["name"]
    with pytest.raises(SpecError) as err:
        load_spec(_write(tmp_path, data))
    message = str(err.value)
    assert "4 problems: modle: unknown key; did you mean model? allowed here: name, model," in message
    assert "name: required, and missing" in message
    assert "steps_per_task: Input should be greater than or equal to 1" in message
    assert "batch_size: Input should be greater than or equal to 1" in message
    assert message.index("modle:") < message.index("name: required")  # the unknown key first


def test_problems_inside_a_section_have_their_full_path(tmp_path):
    problems = spec_problems({**small_spec(), "optimizer": {"lr": -1.0, "warmup_stpes": 2}})
    assert problems[0] == ("optimizer.warmup_stpes", problems[0][1])
    assert "did you mean warmup_steps?" in problems[0][1]
    assert ("optimizer.lr", "Input should be greater than 0") in problems


def test_an_unknown_key_far_from_every_name_gets_no_guess():
    (field, message), = spec_problems({**small_spec(), "zzzzqqq": 1})
    assert field == "zzzzqqq" and "did you mean" not in message and message.startswith("unknown key; allowed here:")


def test_a_file_above_the_size_limit_is_refused_before_parsing(tmp_path):
    path = _write(tmp_path, "name: x\n" + "#" * MAX_SPEC_BYTES + "\n")
    with pytest.raises(SpecError, match=f"bytes; allowed: at most {MAX_SPEC_BYTES}"):
        load_spec(path)


def _alias_bomb(levels: int = 9) -> str:
    """A spec whose ``sequence`` is 10**(levels - 1) task names in a few lines of anchors and aliases."""
    spec = {k: v for k, v in small_spec().items() if k != "sequence"}
    lines = ['tasks: [&a0 "recall_city"]']
    lines += [f"level{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return yaml.safe_dump(spec) + "\n".join(lines) + f"\nsequence: *a{levels - 1}\n"


def test_an_alias_bomb_is_refused_before_validation(tmp_path):
    text = _alias_bomb()
    assert len(text) < 1500  # a few lines, 10**8 task names once expanded
    with pytest.raises(SpecError, match=f"uses 81 YAML aliases; allowed: at most {MAX_ALIASES}"):
        load_spec(_write(tmp_path, text))


#: The spec fuzz: (case, spec text, what the one line must say). Each must exit 2, write nothing.
FUZZ = {
    "wrong_type": (yaml.safe_dump({**small_spec(), "batch_size": "eight"}), "batch_size: Input should be a valid integer"),
    "nan": ("{**}".replace("{**}", yaml.safe_dump(small_spec()) + "eval: {every: .nan}\n"), "eval.every: Input should be a finite number"),
    "inf": (yaml.safe_dump(small_spec()).replace("lr: 0.003", "lr: .inf"), "optimizer.lr: Input should be less than or equal to 1"),
    "negative": (yaml.safe_dump({**small_spec(), "seed": -1}), "seed: Input should be greater than or equal to 0"),
    "huge": (yaml.safe_dump({**small_spec(), "steps_per_task": 10**15}), "steps_per_task: Input should be less than or equal to"),
    "unknown_name": (yaml.safe_dump({**small_spec(), "finetune": {"method": "qlora"}}), "finetune.method: unknown method 'qlora'; allowed: full, lora"),
    "python_tag": ("name: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    "alias_bomb": (_alias_bomb(), "YAML aliases; allowed: at most"),
    "three_problems": (yaml.safe_dump({**small_spec(), "modle": "tiny", "seed": -1, "batch_size": 0}),
                       "3 problems: modle: unknown key; did you mean model?"),
}


@pytest.mark.parametrize("case", sorted(FUZZ))
def test_the_spec_fuzz_exits_2_with_one_line_and_writes_nothing(case, tmp_path, capsys):
    text, says = FUZZ[case]
    out = tmp_path / "out"
    assert main(["run", _write(tmp_path, text), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert says in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
