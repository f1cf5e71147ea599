"""Chapters 00, 01 and 07 and the scale words of every chapter: words follow the numbers.

Each narrative function gets many random and edge-case inputs; the test recomputes the rule stated in
the module's docstring from the numbers and asserts that the words say what the rule says.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from forgetting.book.narrative import dynamics as ndyn
from forgetting.book.narrative import measuring as nm
from forgetting.book.narrative import scale as ns

N_CASES = 200


# ---------------------------------------------------------------- scale


@pytest.mark.parametrize(("n", "text"), [
    (879_488, "about 879 thousand"), (1_051_392, "about 1.1 million"), (135e6, "about 135 million"),
    (1.7e9, "about 1.7 billion"), (512, "about 512"), (2_000_000, "about 2 million"), (99_960, "about 100 thousand"),
])
def test_approximate_count_known_answers(n, text):
    assert ns.approximate_count(n) == text


def test_approximate_count_refuses_a_non_count():
    for bad in (0, -3, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive"):
            ns.approximate_count(bad)


def test_scale_words_orders_of_magnitude_follow_the_ratio():
    rng = np.random.default_rng(0)
    low, high = ns.PAPER_PARAMETERS
    for n in [*10 ** rng.uniform(2, 12, N_CASES), low, high, low * 0.999, 1.0]:
        words = ns.scale_words(int(max(n, 1)))
        n = int(max(n, 1))
        if n >= low:
            assert words["scale_factor"] == "not larger"
            assert ("within" in words["scale_gap"]) == (n <= high)
            continue
        k = math.floor(math.log10(low / n))
        gap = words["scale_gap"]
        if k == 0:
            assert gap.startswith("less than an order")
        else:
            assert gap.startswith(f"{ns._order_word(k)} order{'s' if k > 1 else ''} of magnitude below")
        factor = float(re.search(r"about ([\d,]+) times", words["scale_factor"]).group(1).replace(",", ""))
        assert factor == pytest.approx(low / n, rel=0.5)  # one significant figure


def test_parameter_count_equals_the_loaded_models_count(tmp_path):
    from forgetting.models import load_model, parameter_count
    from forgetting.models.embedded import embedded_dir

    model, _ = load_model("tiny")
    loaded = sum(p.numel() for p in model.parameters())
    assert parameter_count("tiny") == loaded
    assert parameter_count(str(embedded_dir("tiny"))) == loaded  # counted on the meta device from config.json


# ---------------------------------------------------------------- chapter 01: backward transfer


def test_transfer_words_follow_the_share():
    rng = np.random.default_rng(1)
    cases = [(-0.5, -0.2), (-0.5, 0.1), (-0.5, -0.5), (-0.5, -0.9), (0.0, -0.2), (0.3, 0.1), (float("nan"), -0.1)]
    cases += [tuple(rng.uniform(-1, 1, 2)) for _ in range(N_CASES)]
    for b_e, b_a in cases:
        words = nm.transfer_words(b_e, b_a)
        clause = words["transfer_clause"]
        if not (math.isfinite(b_e) and math.isfinite(b_a)):
            assert words["answer_share"] == "n/a" and "not defined" in clause
        elif b_e >= 0:
            assert words["answer_share"] == "n/a" and "no forgetting on average" in clause
        else:
            share = b_a / b_e
            assert words["answer_share"] == f"{100 * share:.0f} %"
            assert ("nothing is forgotten" in clause) == (share <= 0)
            assert ("the gap between the two is the part" in clause) == (0 < share < 1)
            assert ("at least as much" in clause) == (share >= 1)


# ---------------------------------------------------------------- chapter 01: how early


def _curve(rng, learned, end, start=200, every=25, n=8):
    steps = start + every * np.arange(1, n + 1)
    path = np.sort(rng.uniform(min(learned, end), max(learned, end), n))[:: -1 if learned > end else 1]
    path[-1] = end
    return pd.Series(path, index=steps)


def test_early_forgetting_words_follow_the_drop():
    rng = np.random.default_rng(2)
    for _ in range(N_CASES):
        learned, end = rng.uniform(0, 1, 2)
        curve = _curve(rng, learned, end)
        words = nm.early_forgetting_words(curve, learned, end, stage_start=200, steps_per_task=200)
        assert words["first_eval_step"] == "25"
        drop = learned - end
        if drop <= nm.FLAT:
            assert "no more than" in words["early_clause"] and words["half_drop_steps"] == "n/a"
            assert "at most" in words["speed_clause"]
            continue
        first = float(curve.iloc[0])
        assert words["early_clause"].startswith("is already" if learned - first >= drop / 2 else "is still")
        half_step = int(curve[curve <= learned - drop / 2].index[0]) - 200
        assert words["half_drop_steps"] == str(half_step)
        assert f"within {half_step} of the stage's 200 steps" in words["speed_clause"]
        if "already" in words["early_clause"]:
            assert f"{100 * (learned - first) / drop:.0f} %" in words["early_clause"]


def test_early_forgetting_words_refuse_an_empty_curve():
    with pytest.raises(ValueError, match="no evaluated step"):
        nm.early_forgetting_words(pd.Series(dtype=float), 0.9, 0.1, stage_start=0, steps_per_task=10)


# ---------------------------------------------------------------- chapter 07: onsets and depth


def test_onset_words_count_the_mechanisms_no_later_than_forgetting():
    rng = np.random.default_rng(3)
    for _ in range(N_CASES):
        steps = int(rng.integers(20, 400))
        measured = [m for m in ndyn.MECHANISMS if rng.random() < 0.8] or ["drift"]
        t50 = pd.Series(rng.integers(0, steps + 1, len(measured) + 1).astype(float), index=["forgetting", *measured])
        words = ndyn.onset_words(t50, steps)
        n, total = sum(t50[m] <= t50["forgetting"] for m in measured), len(measured)
        expected = (f"none of the {total}" if n == 0 else f"all {total}" if n == total and total > 1
                    else f"{n} of {total}")
        assert f"and {expected} mechanisms reach half" in words["meaning_timing"]
        fraction = t50["forgetting"] / steps
        assert words["timing_clause"] == ndyn.timing_sentence(fraction)
        assert words["t50_fraction"] == f"{100 * fraction:.0f} %"
        for m in ndyn.MECHANISMS:
            assert words[f"t50_{m}"] == (f"{t50[m]:.0f}" if m in measured else "n/a")


def test_depth_words_say_furthest_beyond_only_when_a_block_exceeds_its_null():
    rng = np.random.default_rng(4)
    for _ in range(N_CASES):
        n = int(rng.integers(1, 9))
        beyond = pd.Series(rng.normal(0, 0.1, n) - rng.choice([0, 0.5]), index=range(1, n + 1))
        words = ndyn.depth_words(beyond)
        assert words["deepest_layer"] == str(int(beyond.idxmax())) and words["n_layers"] == str(n)
        assert ("furthest beyond" in words["depth_sentence"]) == (beyond.max() > 0)
        assert ("no block's drift" in words["depth_sentence"]) == (beyond.max() <= 0)


# ---------------------------------------------------------------- chapter 01: intransigence, held-out loss


def test_intransigence_words_follow_the_sign():
    for value in (-0.15, -0.021, -0.01, 0.0, 0.015, 0.02, 0.3, float("nan")):
        words = nm.intransigence_words(value)
        if not math.isfinite(value):
            assert "not measured" in words
        elif value > nm.FLAT:
            assert words.startswith(": positive") and "less well" in words
        elif value < -nm.FLAT:
            assert words.startswith(": negative") and "better" in words
        else:
            assert "about equally well" in words


def test_heldout_words_compare_with_the_uniform_guess():
    rng = np.random.default_rng(5)
    for _ in range(N_CASES):
        vocab = int(rng.integers(50, 60_000))
        before, after = rng.uniform(0, 2 * math.log(vocab), 2)
        words = nm.heldout_words(before, after, vocab)
        assert f"{math.log(vocab):.2f} nats of a uniform guess over its {vocab} tokens" in words
        assert ("worse than guessing" in words) == (after > math.log(vocab))
        if after <= math.log(vocab):
            change = after - before
            assert ("it rises" in words) == (change > nm.FLAT) and ("it falls" in words) == (change < -nm.FLAT)
    assert nm.heldout_words(float("nan"), 1.0, 100) == "not measured on this run"


def test_output_vocabulary_is_the_models_logit_count():
    from forgetting.models import load_model, output_vocabulary
    from forgetting.models.embedded import embedded_dir

    model, _ = load_model("tiny")
    assert output_vocabulary("tiny") == model.get_output_embeddings().weight.shape[0]
    assert output_vocabulary(str(embedded_dir("tiny"))) == output_vocabulary("tiny")
