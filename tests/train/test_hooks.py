"""Training hooks: with none the loop is the pre-hook loop bit for bit; each hook point is called in the
documented order and can do what it is documented to do; mitigations are chosen by name from the spec."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch
from accelerate import Accelerator

from forgetting import mitigations
from forgetting.errors import SpecError
from forgetting.evaluate import prepare_task
from forgetting.hooks import TaskContext, TrainingHook
from forgetting.models import load_model
from forgetting.models.finetune import method_names
from forgetting.runs import Run
from forgetting.spec import parse_spec
from forgetting.tasks import make_task
from forgetting.train import sequence as seq
from forgetting.train.loop import OptimConfig, train_task
from tests.conftest import small_spec
from tests.train import _reference_loop as reference


def _model_and_data(n_train: int = 32):
    torch.manual_seed(0)
    model, tok = load_model("tiny")
    return model, prepare_task(make_task("recall_city", n_train=n_train, n_eval=4), tok).train


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_no_hooks_gives_the_pre_hook_loop_bit_for_bit(grad_accum):
    optim = OptimConfig(lr=3e-3, warmup_steps=2)
    model, data = _model_and_data()
    new = train_task(model, data, steps=5, batch_size=8, grad_accum=grad_accum, optim=optim, seed=3,
                     accelerator=Accelerator(cpu=True))
    new_weights = _weights(model)
    model, data = _model_and_data()
    old = reference.train_task(model, data, steps=5, batch_size=8, grad_accum=grad_accum, seed=3,
                               optim=reference.OptimConfig(**dataclasses.asdict(optim)), accelerator=Accelerator(cpu=True))
    assert new == old
    assert all(torch.equal(new_weights[n], p) for n, p in _weights(model).items())


def _old_loop_calling_after_step(model, data, *, hooks=(), stage=None, earlier=None, optim, **kwargs):
    """The pre-hook loop, driving the run's hooks through its old ``on_step`` callback."""
    ctx = TaskContext(model=model, data=data, task_name=kwargs["task_name"], steps=kwargs["steps"],
                      grad_accum=kwargs["grad_accum"], accelerator=kwargs["accelerator"], stage=stage)

    def on_step(step, loss, lr):
        ctx.step, ctx.loss, ctx.lr = step, loss, lr
        for hook in hooks:
            if hook is not None:
                hook.after_step(ctx)

    return reference.train_task(model, data, optim=reference.OptimConfig(**dataclasses.asdict(optim)), on_step=on_step,
                                **kwargs)


def test_a_run_with_no_mitigation_equals_the_pre_hook_pipeline(tmp_path, monkeypatch):
    spec = parse_spec(small_spec(snapshots={"every": 3}))
    new = Run.open(seq.run_experiment(spec, tmp_path / "new", progress=False))
    monkeypatch.setattr(seq, "train_task", _old_loop_calling_after_step)
    old = Run.open(seq.run_experiment(spec, tmp_path / "old", progress=False))
    pd.testing.assert_frame_equal(new.evals, old.evals, check_exact=True)
    pd.testing.assert_frame_equal(new.train_log, old.train_log, check_exact=True)
    assert [s.label for s in new.snapshots()] == [s.label for s in old.snapshots()]
    for info in new.snapshots():
        a, b = new.snapshot(info.label), old.snapshot(info.label)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Recorder(TrainingHook):
    def __init__(self):
        self.calls: list[tuple] = []

    def before_task(self, ctx):
        self.calls.append(("before_task", ctx.step, ctx.optimizer is None))

    def before_backward(self, ctx, loss):
        self.calls.append(("before_backward", ctx.step, len(ctx.micro_batch)))
        return loss

    def after_backward(self, ctx):
        grads = [p.grad for p in ctx.model.parameters() if p.requires_grad]
        self.calls.append(("after_backward", ctx.step, all(g is not None for g in grads)))

    def after_step(self, ctx):
        self.calls.append(("after_step", ctx.step, ctx.loss == ctx.loss))

    def after_task(self, ctx):
        self.calls.append(("after_task", ctx.step, ctx.model.training))


def test_hooks_are_called_in_the_documented_order():
    model, data = _model_and_data()
    rec = Recorder()
    train_task(model, data, steps=2, batch_size=8, grad_accum=2, optim=OptimConfig(), seed=0,
               accelerator=Accelerator(cpu=True), hooks=[rec])
    step = [("before_backward", 0, 4), ("before_backward", 0, 4), ("after_backward", 0, True), ("after_step", 1, True)]
    step2 = [("before_backward", 1, 4), ("before_backward", 1, 4), ("after_backward", 1, True), ("after_step", 2, True)]
    assert rec.calls == [("before_task", 0, True), *step, *step2, ("after_task", 2, False)]


class ZeroGradients(TrainingHook):
    def after_backward(self, ctx):
        for p in ctx.model.parameters():
            if p.grad is not None:
                p.grad.zero_()


class FreezeEmbeddings(TrainingHook):
    def before_task(self, ctx):
        ctx.model.get_input_embeddings().weight.requires_grad_(False)


def test_after_backward_edits_the_gradient_the_optimizer_uses():
    model, data = _model_and_data()
    start = _weights(model)
    train_task(model, data, steps=3, batch_size=8, optim=OptimConfig(lr=1e-2), seed=0,
               accelerator=Accelerator(cpu=True), hooks=[ZeroGradients()])
    assert all(torch.equal(start[n], p) for n, p in _weights(model).items())  # AdamW with zero gradients: no step


def test_before_task_can_freeze_parameters_before_the_optimizer_is_made():
    model, data = _model_and_data()
    start = _weights(model)
    train_task(model, data, steps=3, batch_size=8, optim=OptimConfig(lr=1e-2), seed=0,
               accelerator=Accelerator(cpu=True), hooks=[FreezeEmbeddings()])
    after = _weights(model)
    embed = "model.embed_tokens.weight"
    assert torch.equal(after[embed], start[embed])
    assert not torch.equal(after["model.layers.0.self_attn.q_proj.weight"], start["model.layers.0.self_attn.q_proj.weight"])


def test_the_spec_accepts_registered_methods_and_names_the_allowed_ones():
    assert method_names()[:2] == ("full", "lora")
    with pytest.raises(SpecError, match=r"finetune.method: unknown method 'qlora'; allowed: full, lora"):
        parse_spec(small_spec(finetune={"method": "qlora"}))
    assert "l2" in mitigations.names()
    with pytest.raises(SpecError, match=r"finetune.mitigation.name: unknown mitigation 'ewk'; allowed: .*l2"):
        parse_spec(small_spec(finetune={"mitigation": {"name": "ewk"}}))
    with pytest.raises(SpecError, match=r"finetune.mitigation.strength"):
        parse_spec(small_spec(finetune={"mitigation": {"name": "l2", "strength": -1}}))


def test_a_spec_without_mitigation_keeps_its_hash():
    # the hash of the shipped quick spec before the mitigation field existed (commit 74395ee)
    from forgetting.profiles import experiment_spec

    assert experiment_spec("quick").hash() == "841b4bba6986"


def test_bad_mitigation_options_fail_before_the_model_is_loaded(tmp_path, monkeypatch):
    monkeypatch.setattr(seq, "model_for_spec", lambda spec: pytest.fail("must fail before loading the model"))
    spec = parse_spec(small_spec(finetune={"mitigation": {"name": "l2", "options": {"rate": 1}}}))
    with pytest.raises(SpecError, match=r"finetune.mitigation.options: l2 takes no options, got rate"):
        seq.run_experiment(spec, tmp_path / "run", progress=False)


def test_l2_at_strength_0_is_the_plain_run_and_above_it_pulls_towards_the_start(tmp_path):
    plain = Run.open(seq.run_experiment(parse_spec(small_spec()), tmp_path / "plain", progress=False))
    off = parse_spec(small_spec(finetune={"mitigation": {"name": "l2", "strength": 0.0}}))
    assert mitigations.build("l2", 0.0) is None and off.hash() != plain.spec.hash()
    off_run = Run.open(seq.run_experiment(off, tmp_path / "off", progress=False))
    pd.testing.assert_frame_equal(off_run.evals, plain.evals, check_exact=True)
    strong = parse_spec(small_spec(finetune={"mitigation": {"name": "l2", "strength": 100.0}}))
    strong_run = Run.open(seq.run_experiment(strong, tmp_path / "strong", progress=False))

    def moved(run):  # how far stage 2 took the weights from where it started
        a, b = run.snapshot(1), run.snapshot(2)
        return sum(float((b[k] - a[k]).pow(2).sum()) for k in a) ** 0.5

    assert moved(strong_run) < 0.5 * moved(plain)
