"""Evaluation metrics on models whose outputs we control, so every value is known in advance."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from forgetting.evaluate import evaluate_examples, performance_matrix
from forgetting.models.embedded import build_tokenizer
from forgetting.tasks.encoding import answer_token_ids, encode_examples
from forgetting.tasks.families import Example


class ScriptedLM(torch.nn.Module):
    """Logits that put ``confidence`` on the true next token, except where told to predict ``wrong``."""

    def __init__(self, vocab_size: int, confidence: float = 10.0, wrong: dict[int, int] | None = None):
        super().__init__()
        self.vocab_size, self.confidence, self.wrong = vocab_size, confidence, wrong or {}
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask=None, **_):
        b, length = input_ids.shape
        logits = torch.zeros(b, length, self.vocab_size)
        nxt = torch.roll(input_ids, -1, dims=1)
        for true_id, predicted_id in self.wrong.items():
            nxt = torch.where(nxt == true_id, torch.tensor(predicted_id), nxt)
        logits.scatter_(2, nxt.unsqueeze(-1), self.confidence)
        return type("Out", (), {"logits": logits})()


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


EXAMPLES = [Example("Q : where does koma live ? A :", "bern"), Example("Q : reverse a b A :", "b a")]


def test_an_oracle_scores_perfectly_and_its_loss_is_known(tok):
    enc = encode_examples(tok, EXAMPLES)
    scores = evaluate_examples(ScriptedLM(len(tok), confidence=10.0), enc, answer_token_ids(tok, ["bern", "a", "b"]))
    V = len(tok)
    expected_loss = -(10.0 - math.log(math.exp(10.0) + V - 1))  # -log softmax of the true token
    assert scores["loss"] == pytest.approx(expected_loss, abs=2e-5)  # float32 logits
    assert scores["token_accuracy"] == scores["exact_match"] == scores["answer_match"] == 1.0


def test_uniform_logits_give_log_vocab_loss(tok):
    enc = encode_examples(tok, EXAMPLES)
    scores = evaluate_examples(ScriptedLM(len(tok), confidence=0.0), enc)
    assert scores["loss"] == pytest.approx(math.log(len(tok)), rel=1e-6)


def test_answer_match_ignores_a_format_shift(tok):
    """Predicting [PAD] instead of [EOS] breaks exact match but not the answer restricted match."""
    enc = encode_examples(tok, EXAMPLES)
    model = ScriptedLM(len(tok), wrong={tok.eos_token_id: tok.pad_token_id})
    scores = evaluate_examples(model, enc, answer_token_ids(tok, ["bern", "a", "b"]))
    # targets: "bern [eos]" and "b a [eos]": 5 target tokens, the 2 eos are wrong
    assert scores["token_accuracy"] == pytest.approx(3 / 5)
    assert scores["exact_match"] == 0.0
    assert scores["answer_match"] == 1.0


def test_answer_match_counts_a_wrong_answer(tok):
    enc = encode_examples(tok, EXAMPLES)
    bern, oslo = tok.convert_tokens_to_ids(["bern", "oslo"])
    scores = evaluate_examples(ScriptedLM(len(tok), wrong={bern: oslo}), enc, answer_token_ids(tok, ["bern", "oslo", "a", "b"]))
    assert scores["exact_match"] == scores["answer_match"] == 0.5
    assert scores["token_accuracy"] == pytest.approx(4 / 5)


def test_batches_do_not_change_the_result(tok):
    enc = encode_examples(tok, EXAMPLES * 5)
    model = ScriptedLM(len(tok), wrong={tok.convert_tokens_to_ids("bern"): 7})
    ids = answer_token_ids(tok, ["bern", "a", "b"])
    assert evaluate_examples(model, enc, ids, batch_size=3) == pytest.approx(evaluate_examples(model, enc, ids, batch_size=100))


def test_performance_matrix_reads_end_of_stage_rows():
    rows = []
    for stage, stage_task in enumerate(["base", "a", "b"]):
        for index, task in enumerate(["a", "b"]):
            value = 10 * stage + index
            rows.append(dict(stage=stage, stage_task=stage_task, step=stage * 5, end_of_stage=True,
                             task=task, task_index=index, metric="exact_match", value=value))
            rows.append(dict(stage=stage, stage_task=stage_task, step=stage * 5 - 2, end_of_stage=False,
                             task=task, task_index=index, metric="exact_match", value=-1.0))
    R = performance_matrix(pd.DataFrame(rows), "exact_match")
    assert list(R.index) == ["base", "a", "b"] and list(R.columns) == ["a", "b"]
    assert R.to_numpy().tolist() == [[0, 1], [10, 11], [20, 21]]
    with pytest.raises(ValueError, match="metric: 'acc' is not one of"):
        performance_matrix(pd.DataFrame(rows), "acc")


def test_one_pass_over_all_tasks_equals_separate_passes():
    from forgetting.evaluate import evaluate_tasks, prepare_task
    from forgetting.models import load_model
    from forgetting.tasks import make_task

    model, tok = load_model("tiny")
    tasks = [prepare_task(make_task(n, n_eval=12), tok) for n in ("recall_city", "sort", "add")]
    together = evaluate_tasks(model, tasks, batch_size=16)
    for task, scores in zip(tasks, together):
        alone = evaluate_examples(model, task.eval, task.answer_ids, batch_size=5)
        assert scores == pytest.approx(alone, rel=1e-5, abs=1e-6)
