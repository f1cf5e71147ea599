"""The generated world, task families, sequences, encoding and the Hugging Face datasets adapter."""

from __future__ import annotations

import pytest
import torch

from forgetting.models.embedded import build_tokenizer
from forgetting.tasks import SEQUENCES, make_task, make_world, task_names
from forgetting.tasks.encoding import IGNORE_INDEX, answer_token_ids, encode_examples
from forgetting.tasks.families import Example, entity_split
from forgetting.tasks.world import RELATIONS, pretraining_corpus


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_world_is_deterministic_and_complete():
    a, b = make_world(0), make_world.__wrapped__(0, 200)
    assert a.entities == b.entities and a.facts == b.facts
    assert len(set(a.entities)) == 200
    assert a.n_facts() == 200 * len(RELATIONS)
    assert make_world.__wrapped__(1, 200).entities != a.entities


def test_at_least_eight_tasks_in_three_families():
    names = task_names()
    assert len(names) >= 8
    families = {make_task(n).family for n in names}
    assert families == {"recall", "update", "skill"}


def test_fact_tasks_split_people_and_share_the_split():
    world = make_world()
    train_people, eval_people = entity_split(world)
    assert not set(train_people) & set(eval_people)
    assert len(eval_people) == 60
    city, job = make_task("recall_city"), make_task("recall_job")
    everyone = set(world.entities)
    people = lambda task: {w for ex in task.eval for w in ex.prompt.split() if w in everyone}  # noqa: E731
    assert people(city) <= set(eval_people)
    assert people(job) <= set(eval_people)
    assert len(people(city)) == len(city.eval)


def test_update_changes_every_answer_by_one_rule():
    recall, update = make_task("recall_city"), make_task("update_city")
    assert [e.prompt for e in recall.train] == [e.prompt for e in update.train]
    pairs = {(r.target, u.target) for r, u in zip(recall.train + recall.eval, update.train + update.eval)}
    mapping = dict(pairs)
    assert len(mapping) == len(pairs)  # a function of the old value
    assert all(old != new for old, new in pairs)  # nobody keeps their city


@pytest.mark.parametrize(
    ("name", "prompt", "target"),
    [
        ("reverse", "Q : reverse h e c f A :", "f c e h"),
        ("copy", "Q : copy h e c f A :", "h e c f"),
        ("add", "Q : what is 9 plus 3 A :", "1 2"),
    ],
)
def test_skill_rules(name, prompt, target):
    task = make_task(name, n_train=None)
    rule = {ex.prompt: ex.target for ex in task.train + task.eval}
    if prompt in rule:
        assert rule[prompt] == target
    for ex in task.train[:50]:
        words = ex.prompt.split()[3:-2]  # "Q : <skill> w1 .. wn A :"
        if name == "reverse":
            assert ex.target.split() == words[::-1]
        elif name == "copy":
            assert ex.target.split() == words
        else:
            a, b = int(ex.prompt.split()[4]), int(ex.prompt.split()[6])
            assert ex.target == " ".join(str(a + b))


def test_sort_targets_are_sorted_and_splits_disjoint():
    task = make_task("sort")
    for ex in task.train + task.eval:
        assert ex.target.split() == sorted(ex.prompt.split()[3:-2])
    assert not {e.prompt for e in task.train} & {e.prompt for e in task.eval}


def test_named_sequences_use_known_tasks():
    assert set(SEQUENCES) >= {"default", "similar", "conflict", "skills", "long"}
    for tasks in SEQUENCES.values():
        assert set(tasks) <= set(task_names())
    assert len(SEQUENCES["long"]) == 8


def test_unknown_task_names_the_allowed_ones():
    with pytest.raises(KeyError, match="allowed: recall_city"):
        make_task("recal_city")


def test_tokenizer_covers_every_task_word(tokenizer):
    unk = tokenizer.unk_token_id
    corpus = pretraining_corpus(make_world(), 50, seed=3)
    texts = corpus + [ex.prompt + " " + ex.target for n in task_names() for ex in make_task(n).train[:20]]
    for text in texts:
        assert unk not in tokenizer(text, add_special_tokens=False)["input_ids"], text


def test_encoding_masks_exactly_the_target_and_eos(tokenizer):
    examples = [Example("Q : copy a b c A :", "a b c"), Example("Q : where does koma live ? A :", "bern")]
    enc = encode_examples(tokenizer, examples)
    assert enc.input_ids.shape == enc.labels.shape == enc.attention_mask.shape == enc.answer_mask.shape
    row = enc.input_ids[0]
    assert row[0] == tokenizer.bos_token_id
    n_prompt = 1 + len("Q : copy a b c A :".split())
    labelled = enc.labels[0] != IGNORE_INDEX
    assert labelled.nonzero().flatten().tolist() == list(range(n_prompt, n_prompt + 4))  # a b c [eos]
    assert enc.labels[0, n_prompt + 3] == tokenizer.eos_token_id
    assert enc.answer_mask[0].nonzero().flatten().tolist() == list(range(n_prompt, n_prompt + 3))
    assert tokenizer.decode(enc.labels[1][enc.answer_mask[1]]) == "bern"
    # the shorter row is right-padded and its padding is neither attended nor labelled
    pad = enc.attention_mask[1] == 0
    assert pad.any() and (enc.input_ids[1][pad] == tokenizer.pad_token_id).all()
    assert (enc.labels[1][pad] == IGNORE_INDEX).all()


def test_select_trims_to_the_longest_row(tokenizer):
    enc = encode_examples(tokenizer, [Example("Q : copy a A :", "a"), Example("Q : copy a b c d e A :", "a b c d e")])
    short = enc.select(torch.tensor([0]))
    assert short.input_ids.shape[1] == int(enc.attention_mask[0].sum())


def test_answer_token_ids(tokenizer):
    ids = answer_token_ids(tokenizer, ["oslo", "lima"])
    assert sorted(tokenizer.convert_ids_to_tokens(ids.tolist())) == ["lima", "oslo"]


def test_max_length_is_enforced(tokenizer):
    with pytest.raises(ValueError, match="max_length=4"):
        encode_examples(tokenizer, [Example("Q : copy a b c A :", "a b c")], max_length=4)


def test_hf_dataset_adapter_builds_a_task_in_memory():
    from datasets import Dataset

    from forgetting.tasks.hf import task_from_dataset

    rows = {"question": [f"Q : copy {c} A :" for c in "abcdefghij"], "answer": list("abcdefghij")}
    task = task_from_dataset(Dataset.from_dict(rows), "copy1", prompt_column="question", target_column="answer",
                             eval_fraction=0.3, seed=1)
    assert len(task.train) == 7 and len(task.eval) == 3
    assert {e.prompt for e in task.train}.isdisjoint({e.prompt for e in task.eval})
    assert set(task.answer_vocab) == set("abcdefghij")
    assert all(e.target == e.prompt.split()[3] for e in task.train + task.eval)
    with pytest.raises(ValueError, match="target_column: no column 'label'; the dataset has question, answer"):
        task_from_dataset(Dataset.from_dict(rows), "x", prompt_column="question", target_column="label")
