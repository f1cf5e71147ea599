"""Known answers for forgetting.mechanisms.landscape: Hessian-vector products, extreme eigenvalues and
trace of the Hessian, the second-order change, parameter selection, and the stable import path of
the landscape modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from forgetting.mechanisms import landscape, lanczos as lanczos_module, loss_surfaces, trace_estimators
from forgetting.mechanisms.landscape import (
    HessianOperator,
    hessian_eigenvalues,
    hessian_trace,
    hutchpp,
    hvp,
    lanczos,
    second_order_change,
    select_parameters,
)
from tests._tiny_models import LLAMA_SIZES, tiny_llama
from tests.mechanisms._quadratics import NEG_DOMINANT, quadratic, sym_with_spectrum


# --------------------------------------------------------------------------------------------------
# extreme eigenvalues and trace of quadratics: H = A exactly
# --------------------------------------------------------------------------------------------------


def test_lanczos_largest_algebraic_despite_dominant_negative() -> None:
    A = sym_with_spectrum(NEG_DOMINANT)
    loss_fn, params = quadratic(A, split=(10, 30))
    # default tolerance (1e-4 relative): errors within it
    np.testing.assert_allclose(hessian_eigenvalues(loss_fn, params, k=3), [3.0, 2.0, 1.5], rtol=1e-4)
    tight = {"tol": 1e-9}
    np.testing.assert_allclose(hessian_eigenvalues(loss_fn, params, k=3, **tight), [3.0, 2.0, 1.5], rtol=1e-7)
    np.testing.assert_allclose(
        hessian_eigenvalues(loss_fn, params, k=2, which="SA", **tight), [-6.0, -10.0], rtol=1e-7
    )
    np.testing.assert_allclose(hessian_eigenvalues(loss_fn, params, which="both", **tight), [3.0, -10.0], rtol=1e-7)
    np.testing.assert_allclose(hessian_eigenvalues(loss_fn, params, which="LM", **tight), [-10.0], rtol=1e-7)

    # the pitfall this guards against: power iteration converges to the largest-magnitude eigenvalue
    v = torch.randn(40, dtype=torch.float64)
    for _ in range(300):
        v = A @ v
        v /= v.norm()
    assert float(v @ A @ v) == pytest.approx(-10.0, rel=1e-6)


def test_lanczos_eigenvectors_and_counts() -> None:
    A = sym_with_spectrum(NEG_DOMINANT, seed=3)
    loss_fn, params = quadratic(A, split=(25, 15))
    vals, vecs = hessian_eigenvalues(loss_fn, params, k=2, return_eigenvectors=True, tol=1e-8)
    for lam, vec in zip(vals, vecs):
        assert [tuple(t.shape) for t in vec] == [(25,), (15,)]
        x = torch.cat(vec)
        assert float(x.norm()) == pytest.approx(1.0, abs=1e-8)
        assert float((A @ x - lam * x).norm()) < 1e-5
    op = HessianOperator(loss_fn, params)
    res = lanczos(op.matvec_flat, op.dim, 1, tol=1e-6, max_iter=40)
    assert res.converged and res.n_matvecs == op.n_matvecs == res.n_iter
    assert res.n_matvecs < 40  # stopped before exhausting the space
    assert res.eigenvalues[0] == pytest.approx(3.0, rel=1e-6)
    assert abs(res.eigenvalues[0] - 3.0) <= res.residuals[0] + 1e-12  # an eigenvalue lies within the residual
    assert len(res.ritz_values) == res.n_iter and np.all(np.diff(res.ritz_values) <= 0)



def test_trace_known_answers() -> None:
    evals = torch.tensor([5.0, 3.0, -2.0, 0.5, 0.25, 0.1, -0.1, 0.0])
    loss_fn, params = quadratic(sym_with_spectrum(evals), split=(3, 5))
    # Hutch++ is exact once the sketch spans the whole space (m // 3 >= dim)
    assert hessian_trace(loss_fn, params, n_matvecs=24) == pytest.approx(float(evals.sum()), abs=1e-9)
    # Hutchinson with Rademacher vectors is exact for a diagonal matrix (v_i^2 = 1)
    D = torch.diag(evals.double())
    loss_d, params_d = quadratic(D)
    assert hessian_trace(loss_d, params_d, n_matvecs=3, method="hutchinson") == pytest.approx(float(evals.sum()))
    # the exact number of matvecs is spent, deterministic per seed
    op = HessianOperator(loss_fn, params)
    a = hutchpp(op.matmat_flat, op.dim, 10, seed=4)
    assert op.n_matvecs == 10
    assert a == hutchpp(op.matmat_flat, op.dim, 10, seed=4)
    with pytest.raises(ValueError, match="n_matvecs"):
        hessian_trace(loss_fn, params, n_matvecs=2)
    with pytest.raises(ValueError, match="method"):
        hessian_trace(loss_fn, params, method="slq")


# --------------------------------------------------------------------------------------------------
# Hessian-vector products of a tiny MLP: finite differences, full Hessian, torch.func
# --------------------------------------------------------------------------------------------------


def tiny_mlp_problem():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    names = [n for n, _ in net.named_parameters()]
    params = list(net.parameters())

    def loss_fn() -> torch.Tensor:
        return nn.functional.cross_entropy(net(x), y)

    def loss_of_flat(flat: torch.Tensor) -> torch.Tensor:
        tensors, offset = {}, 0
        for n, p in zip(names, params):
            tensors[n] = flat[offset : offset + p.numel()].reshape(p.shape)
            offset += p.numel()
        return nn.functional.cross_entropy(torch.func.functional_call(net, tensors, (x,)), y)

    flat0 = torch.cat([p.detach().reshape(-1) for p in params])
    return net, params, loss_fn, loss_of_flat, flat0


def test_hvp_matches_full_hessian_finite_differences_and_torch_func() -> None:
    net, params, loss_fn, loss_of_flat, flat0 = tiny_mlp_problem()
    op = HessianOperator(loss_fn, params)
    H_full = torch.autograd.functional.hessian(loss_of_flat, flat0)
    torch.testing.assert_close(op.dense(), H_full, rtol=1e-10, atol=1e-12)

    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    hv = op.flatten(hvp(loss_fn, params, op.unflatten(v)))
    torch.testing.assert_close(hv, H_full @ v, rtol=1e-10, atol=1e-12)

    # forward-over-reverse: jvp of the gradient
    _, hv_func = torch.func.jvp(torch.func.grad(loss_of_flat), (flat0,), (v,))
    torch.testing.assert_close(hv, hv_func, rtol=1e-10, atol=1e-12)

    # central finite differences of the gradient: (g(x + e v) - g(x - e v)) / 2e
    eps = 1e-5
    g = torch.func.grad(loss_of_flat)
    fd = (g(flat0 + eps * v) - g(flat0 - eps * v)) / (2 * eps)
    torch.testing.assert_close(hv, fd, rtol=1e-6, atol=1e-8)

    # the top eigenvalue and trace agree with the dense Hessian
    dense_evals = torch.linalg.eigvalsh(H_full)
    assert hessian_eigenvalues(loss_fn, params, tol=1e-8)[0] == pytest.approx(float(dense_evals[-1]), rel=1e-6)
    assert hessian_eigenvalues(loss_fn, params, which="SA", tol=1e-8)[0] == pytest.approx(
        float(dense_evals[0]), rel=1e-5, abs=1e-9
    )
    assert hessian_trace(loss_fn, params, n_matvecs=3 * op.dim) == pytest.approx(float(H_full.trace()), rel=1e-9)


def test_hessian_subset_and_validation() -> None:
    net, params, loss_fn, loss_of_flat, flat0 = tiny_mlp_problem()
    H_full = torch.autograd.functional.hessian(loss_of_flat, flat0)
    # the Hessian over a subset of params is the corresponding diagonal block
    start = params[0].numel() + params[1].numel()
    block = slice(start, start + params[2].numel())
    op = HessianOperator(loss_fn, [params[2]])
    torch.testing.assert_close(op.dense(), H_full[block, block], rtol=1e-10, atol=1e-12)
    # the last bias enters linearly in the logits but the softmax makes it second-order: nonzero block
    b2 = HessianOperator(loss_fn, [params[3]]).dense()
    assert float(b2.abs().max()) > 0

    frozen = torch.zeros(3)
    with pytest.raises(ValueError, match=r"params\[0\].*does not require grad"):
        HessianOperator(loss_fn, [frozen])
    unrelated = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="does not depend"):
        HessianOperator(loss_fn, [unrelated])
    with pytest.raises(TypeError, match="single tensor"):
        HessianOperator(loss_fn, params[0])
    # a param the loss ignores, next to one it uses: zero rows and columns
    op2 = HessianOperator(loss_fn, [params[2], unrelated])
    H2 = op2.dense()
    assert float(H2[-3:].abs().max()) == 0.0 and float(H2[:, -3:].abs().max()) == 0.0


def test_second_order_change_is_exact_for_a_quadratic() -> None:
    A = sym_with_spectrum(NEG_DOMINANT, seed=6)
    loss_fn, params = quadratic(A, split=(20, 20))
    delta = [0.1 * torch.randn(20, dtype=torch.float64) for _ in range(2)]
    before = [p.detach().clone() for p in params]
    out = second_order_change(loss_fn, params, delta, evaluate_actual=True)
    x, d = torch.cat(before), torch.cat(delta)
    assert out["first_order"] == pytest.approx(float(A @ x @ d), rel=1e-10)
    assert out["second_order"] == pytest.approx(0.5 * float(d @ A @ d), rel=1e-10)
    assert out["predicted"] == pytest.approx(out["actual"], rel=1e-9, abs=1e-12)
    for p, b in zip(params, before):  # restored
        assert torch.equal(p.detach(), b)


# --------------------------------------------------------------------------------------------------
# parameter selection and a tiny Llama
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama():
    model = tiny_llama("test", seed=0).double()
    ids = torch.randint(0, LLAMA_SIZES["test"]["vocab_size"], (4, 8))  # drawn after the builder's manual_seed
    return model, ids


def test_select_parameters(llama) -> None:
    model, _ = llama
    attn = select_parameters(model, "attention")
    assert attn and all(".self_attn." in n for n in attn)
    assert len(attn) == 2 * 4  # q, k, v, o per layer (no biases in Llama)
    one = select_parameters(model, "attention", layer=1)
    assert set(one) == {f"model.layers.1.self_attn.{p}_proj.weight" for p in "qkvo"}
    mlp0 = select_parameters(model, r"mlp\.(gate|up)_proj", layer=0)
    assert list(mlp0) == ["model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight"]
    norms = select_parameters(model, predicate=lambda n, p: p.ndim == 1)
    assert all(p.ndim == 1 for p in norms.values()) and "model.norm.weight" in norms
    with pytest.raises(ValueError, match="no trainable parameter matched"):
        select_parameters(model, "lora")


def test_hessian_on_tiny_llama_subset_matches_dense(llama) -> None:
    model, ids = llama
    params = list(select_parameters(model, r"k_proj", layer=0).values())  # 8 x 16 = 128 entries

    def loss_fn() -> torch.Tensor:
        return model(input_ids=ids, labels=ids).loss

    op = HessianOperator(loss_fn, params)
    H = op.dense()
    torch.testing.assert_close(H, H.T, rtol=1e-8, atol=1e-10)
    evals = torch.linalg.eigvalsh(H)
    got = hessian_eigenvalues(loss_fn, params, which="both", tol=1e-8)
    np.testing.assert_allclose(got, [float(evals[-1]), float(evals[0])], rtol=1e-5, atol=1e-9)
    assert hessian_trace(loss_fn, params, n_matvecs=3 * 128) == pytest.approx(float(H.trace()), abs=1e-9)



def test_landscape_is_the_stable_path_of_its_parts() -> None:
    """Every public name of the modules landscape is split into is importable from landscape as the
    same object, and landscape.__all__ lists them."""
    for part in (lanczos_module, loss_surfaces, trace_estimators):
        for name in part.__all__:
            if name == "WHICH":  # a constant of the solver, not re-exported
                continue
            assert name in landscape.__all__, name
            assert getattr(landscape, name) is getattr(part, name), name
    assert all(hasattr(landscape, name) for name in landscape.__all__)
