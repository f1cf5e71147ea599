"""Known answers for forgetting.mechanisms.landscape (HVP, Lanczos, Hutch++, loss surfaces)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from forgetting.mechanisms.landscape import (
    HessianOperator,
    filter_normalized_direction,
    hessian_eigenvalues,
    hessian_trace,
    hutchinson,
    hutchpp,
    hvp,
    interpolate_1d,
    lanczos,
    plane_2d,
    plane_coordinates,
    second_order_change,
    select_parameters,
)



# --------------------------------------------------------------------------------------------------
# quadratic losses 0.5 x^T A x with a chosen spectrum: H = A exactly
# --------------------------------------------------------------------------------------------------


def sym_with_spectrum(evals: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = evals.numel()
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return Q @ torch.diag(evals.double()) @ Q.T


def quadratic(A: torch.Tensor, split: tuple[int, ...] | None = None):
    """loss_fn and params for 0.5 x^T A x, with x optionally split into several parameter tensors."""
    n = A.shape[0]
    x0 = torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sizes = split or (n,)
    params = [p.clone().requires_grad_(True) for p in torch.split(x0, sizes)]

    def loss_fn() -> torch.Tensor:
        x = torch.cat(params)
        return 0.5 * x @ A @ x

    return loss_fn, params


# top 3, bottom -10: the most negative eigenvalue is larger in magnitude than the largest one
NEG_DOMINANT = torch.cat([torch.tensor([3.0, 2.0, 1.5, -10.0, -6.0]), torch.linspace(-1.0, 1.0, 35)])


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


def test_lanczos_keeps_its_basis_orthogonal_long_after_convergence() -> None:
    """Re-orthogonalisation (one classical Gram-Schmidt pass, a second only by the DGKS criterion):
    run far past convergence on a wide spectrum, where plain Lanczos loses orthogonality and returns
    spurious copies ("ghosts") of converged eigenvalues. The k largest must be distinct and exact,
    and the Ritz vectors orthonormal."""
    evals = torch.cat([torch.tensor([1e4, 9e3, 5e3, 1e3]), torch.logspace(2, -3, 196)])
    A = sym_with_spectrum(evals, seed=4)
    res = lanczos(lambda v: A @ v, 200, 4, which="LA", tol=1e-14, max_iter=120, return_eigenvectors=True)
    np.testing.assert_allclose(res.eigenvalues, [1e4, 9e3, 5e3, 1e3], rtol=1e-10)
    V = res.eigenvectors
    torch.testing.assert_close(V.T @ V, torch.eye(4, dtype=torch.float64), atol=1e-8, rtol=0)
    top = res.ritz_values[:8]
    assert np.sum(np.abs(top - 1e4) < 1e-3 * 1e4) == 1  # no ghost copy of the top eigenvalue


def test_lanczos_start_vector() -> None:
    """A start vector near the top eigenvector (a warm start, e.g. from a nearby snapshot) converges in
    fewer matvecs to the same value; an exact eigenvector is found in one; bad ones are named."""
    evals = torch.cat([torch.tensor([10.0, 9.5, 9.0]), torch.linspace(-1.0, 1.0, 97)])
    A = sym_with_spectrum(evals, seed=5)
    w, V = torch.linalg.eigh(A)
    cold = lanczos(lambda v: A @ v, 100, 1, tol=1e-8, max_iter=100)
    near = V[:, -1] + 0.01 * torch.randn(100, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    warm = lanczos(lambda v: A @ v, 100, 1, tol=1e-8, max_iter=100, v0=3.0 * near)
    assert cold.eigenvalues[0] == pytest.approx(10.0, rel=1e-8) and warm.eigenvalues[0] == pytest.approx(10.0, rel=1e-8)
    assert warm.n_matvecs < cold.n_matvecs
    exact = lanczos(lambda v: A @ v, 100, 1, tol=1e-8, max_iter=100, v0=V[:, -1])
    assert exact.eigenvalues[0] == pytest.approx(10.0, rel=1e-10) and exact.n_matvecs <= 2
    for bad in (torch.zeros(100), torch.ones(99), torch.full((100,), float("nan"))):
        with pytest.raises(ValueError, match=r"v0: expected a finite, non-zero vector of shape \(100,\)"):
            lanczos(lambda v: A @ v, 100, 1, v0=bad)


def test_lanczos_small_space_is_exact_and_validates() -> None:
    A = torch.diag(torch.tensor([4.0, -1.0, 2.0], dtype=torch.float64))
    res = lanczos(lambda v: A @ v, 3, 3, which="LA", max_iter=50)
    np.testing.assert_allclose(res.eigenvalues, [4.0, 2.0, -1.0], atol=1e-12)
    assert res.converged and res.n_matvecs <= 3
    with pytest.raises(ValueError, match="which"):
        lanczos(lambda v: v, 3, which="largest")
    with pytest.raises(ValueError, match="k: asks for 4"):
        lanczos(lambda v: v, 3, 2, which="both")


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


def test_trace_standard_errors() -> None:
    """The standard error comes from the same products: zero where the estimate is exact (Rademacher
    on a diagonal matrix; Hutch++ whose sketch spans the space), and on average it matches the known
    variance 2 (||A||_F^2 - sum_i A_ii^2) / m of Hutchinson's estimator and the actual spread of
    both estimators over seeds."""
    evals = torch.tensor([5.0, 3.0, -2.0, 0.5, 0.25, 0.1, -0.1, 0.0])
    D = torch.diag(evals.double())
    est, se = hutchinson(lambda V: D @ V, 8, 5, return_stderr=True)
    assert est == pytest.approx(float(evals.sum())) and se == pytest.approx(0.0, abs=1e-12)
    A = sym_with_spectrum(torch.linspace(-1.0, 3.0, 40), seed=6)
    est, se = hutchpp(lambda V: A @ V, 40, 123, return_stderr=True)  # sketch of 41 >= 40 dimensions
    assert est == pytest.approx(float(torch.trace(A)), abs=1e-9) and se < 1e-9
    m = 50
    exact_se = math.sqrt(2 * (float((A * A).sum()) - float((torch.diagonal(A) ** 2).sum())) / m)
    for fn in (hutchinson, hutchpp):
        runs = [fn(lambda V: A @ V, 40, m, seed=s, return_stderr=True) for s in range(300)]
        values, ses = np.array([r[0] for r in runs]), np.array([r[1] for r in runs])
        assert values[0] == fn(lambda V: A @ V, 40, m, seed=0)  # the same estimate as without stderr
        assert np.sqrt(np.mean(ses**2)) == pytest.approx(np.std(values), rel=0.15)
        if fn is hutchinson:
            assert np.sqrt(np.mean(ses**2)) == pytest.approx(exact_se, rel=0.1)
    loss_fn, params = quadratic(A)
    through_hvps = hessian_trace(loss_fn, params, n_matvecs=m, method="hutchinson", return_stderr=True)
    assert through_hvps == pytest.approx(hutchinson(lambda V: A @ V, 40, m, return_stderr=True), rel=1e-9)


def test_hutchpp_beats_hutchinson_on_low_rank_dominated_spectrum() -> None:
    """Equal matvecs (30), 200 seeds: mean |error| of Hutch++ at most half Hutchinson's."""
    dim = 300
    evals = 1.0 / torch.arange(1, dim + 1, dtype=torch.float64) ** 2  # a few eigenvalues dominate
    A = sym_with_spectrum(evals, seed=5)
    exact = float(evals.sum())
    err_pp = np.mean([abs(hutchpp(lambda V: A @ V, dim, 30, seed=s) - exact) for s in range(200)])
    err_h = np.mean([abs(hutchinson(lambda V: A @ V, dim, 30, seed=s) - exact) for s in range(200)])
    assert err_pp <= 0.5 * err_h


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
# parameter selection, directions and loss surfaces
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(cfg).double().eval()
    ids = torch.randint(0, 40, (4, 8))
    return model, ids


def test_select_parameters(tiny_llama) -> None:
    model, _ = tiny_llama
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


def test_hessian_on_tiny_llama_subset_matches_dense(tiny_llama) -> None:
    model, ids = tiny_llama
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


def test_filter_normalized_direction() -> None:
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = nn.ModuleDict({"lin": nn.Linear(6, 4), "emb": nn.Embedding(5, 3), "conv": Conv1D(7, 3)})
    d = filter_normalized_direction(model, seed=1)
    w = model["lin"].weight.detach()
    torch.testing.assert_close(d["lin.weight"].norm(dim=1), w.norm(dim=1))
    torch.testing.assert_close(d["emb.weight"].norm(dim=1), model["emb"].weight.detach().norm(dim=1))
    # Conv1D stores (in, out): one filter per output column
    torch.testing.assert_close(d["conv.weight"].norm(dim=0), model["conv"].weight.detach().norm(dim=0))
    assert torch.count_nonzero(d["lin.bias"]) == 0 and d["lin.bias"].shape == (4,)
    # deterministic per seed, different across seeds, "norm" for 1-D params
    d2 = filter_normalized_direction(dict(model.named_parameters()), seed=1)
    assert torch.equal(d["lin.weight"], d2["lin.weight"])
    assert not torch.equal(d["lin.weight"], filter_normalized_direction(model, seed=2)["lin.weight"])
    dn = filter_normalized_direction(model.named_parameters(), seed=1, one_d="norm")
    assert float(dn["lin.bias"].norm()) == pytest.approx(float(model["lin"].bias.detach().norm()), rel=1e-6)


def linear_problem():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x = torch.randn(10, 3)
    target_a, target_b = torch.randn(10, 2), torch.randn(10, 2)
    losses = {
        "A": lambda: nn.functional.mse_loss(model(x), target_a),
        "B": lambda: nn.functional.mse_loss(model(x), target_b),
    }
    snap = lambda: {n: p.detach().clone() for n, p in model.named_parameters()}  # noqa: E731
    theta_a = snap()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    theta_b = snap()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    theta_c = snap()  # the model currently holds theta_c
    return model, losses, theta_a, theta_b, theta_c


def loss_at(model, theta, fn) -> float:
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.load_state_dict(theta, strict=False)
    with torch.no_grad():
        out = float(fn())
    model.load_state_dict(saved)
    return out


def test_interpolate_1d_endpoints_and_restore() -> None:
    model, losses, theta_a, theta_b, theta_c = linear_problem()
    model.train()
    df = interpolate_1d(model, theta_a, theta_b, losses, alphas=[0.0, 0.5, 1.0])
    assert isinstance(df, pd.DataFrame) and list(df.columns) == ["alpha", "task", "loss"] and len(df) == 6
    at = lambda a, t: float(df[(df.alpha == a) & (df.task == t)].loss.iloc[0])  # noqa: E731
    assert at(0.0, "A") == pytest.approx(loss_at(model, theta_a, losses["A"]), rel=1e-6)
    assert at(1.0, "B") == pytest.approx(loss_at(model, theta_b, losses["B"]), rel=1e-6)
    mid = {n: 0.5 * (theta_a[n] + theta_b[n]) for n in theta_a}
    assert at(0.5, "A") == pytest.approx(loss_at(model, mid, losses["A"]), rel=1e-6)
    for n, p in model.named_parameters():  # weights and mode restored
        assert torch.equal(p.detach(), theta_c[n])
    assert model.training

    calls = []

    def failing():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return losses["A"]()

    with pytest.raises(RuntimeError, match="boom"):
        interpolate_1d(model, theta_a, theta_b, {"A": failing}, alphas=[0.0, 1.0])
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), theta_c[n])
    with pytest.raises(ValueError, match="theta_a.*not a parameter"):
        interpolate_1d(model, {"nope": torch.zeros(1)}, {"nope": torch.zeros(1)}, losses, [0.0])


def test_plane_2d_passes_through_the_three_snapshots() -> None:
    model, losses, theta_a, theta_b, theta_c = linear_problem()
    pts = plane_coordinates(theta_c, theta_a, theta_b)["points"]
    assert pts["origin"] == (0.0, 0.0) and pts["a"][1] == 0.0 and pts["b"][1] > 0
    dist_a = float(torch.cat([(theta_a[n] - theta_c[n]).reshape(-1) for n in theta_c]).norm())
    assert pts["a"][0] == pytest.approx(dist_a, rel=1e-6)
    xs = [0.0, pts["a"][0], pts["b"][0]]
    ys = [0.0, pts["b"][1]]
    df = plane_2d(model, theta_c, theta_a, theta_b, losses, grid=(xs, ys))
    assert list(df.columns) == ["x", "y", "task", "loss"] and len(df) == 3 * 2 * 2
    assert df.attrs["points"] == pts

    def at(x, y, t):
        sel = df[(df.x == x) & (df.y == y) & (df.task == t)]
        return float(sel.loss.iloc[0])

    assert at(0.0, 0.0, "A") == pytest.approx(loss_at(model, theta_c, losses["A"]), rel=1e-5)
    assert at(pts["a"][0], 0.0, "A") == pytest.approx(loss_at(model, theta_a, losses["A"]), rel=1e-5)
    assert at(pts["b"][0], pts["b"][1], "B") == pytest.approx(loss_at(model, theta_b, losses["B"]), rel=1e-5)
    auto = plane_2d(model, theta_c, theta_a, theta_b, losses, grid=4)
    assert len(auto) == 4 * 4 * 2
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), theta_c[n])
    with pytest.raises(ValueError, match="point_b: lies on the line"):
        plane_coordinates(theta_c, theta_a, {n: 2 * theta_a[n] - theta_c[n] for n in theta_c})
