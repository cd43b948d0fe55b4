"""Tests of :mod:`dmd_torch.regularized`: the three backends, their dispatcher, gradients and errors."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch

from dmd_torch.exact import solve_exact
from dmd_torch.mdp import TabularMDP
from dmd_torch.regularized import (
    AUTO,
    BACKENDS,
    Backend,
    RegularizedSolveError,
    choose_backend,
    flow_residual,
    make_backend,
    newton_system_size,
    regularized_occupancy,
    tree_applicable,
    tree_revenue,
)
from dmd_torch.follower import RegularizedFollower
from dmd_torch.objective import payments
from dmd_torch.regularized.systems import flow_hessian, flow_newton_solve, leaf_elimination
from dmd_torch.regularized.layer import CvxpyLayersOptions
from dmd_torch.regularized.newton import NewtonOptions

DT = torch.float64
ALPHAS = (0.01, 0.1, 1.0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny; intra-op threads only add overhead (and noise on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------ MDPs
def sales_tree(n: int = 2, m: int = 2) -> TabularMDP:
    """A sequential-sales-like history tree: n + 1 actions, m decisions."""
    A = n + 1
    states = [h for t in range(m) for h in itertools.product(range(A), repeat=t)]
    index = {h: i for i, h in enumerate(states)}
    nxt = torch.full((len(states), A), -1, dtype=torch.long)
    for h, i in index.items():
        if len(h) + 1 < m:
            for a in range(A):
                nxt[i, a] = index[h + (a,)]
    return TabularMDP.deterministic(states, list(range(A)), nxt)


def layered_mdp(
    gen: torch.Generator, widths: tuple[int, ...] = (2, 3, 3), A: int = 3, K: int = 2, stop: float = 0.1
) -> TabularMDP:
    """A random stochastic finite-horizon MDP in time layers; each step ends the episode w.p. ``stop``."""
    offs = [0, *itertools.accumulate(widths)]
    S = offs[-1]
    ns = torch.zeros(S, A, K, dtype=torch.long)
    pr = torch.zeros(S, A, K, dtype=DT)
    for t in range(len(widths) - 1):
        rows = slice(offs[t], offs[t + 1])
        ns[rows] = torch.randint(offs[t + 1], offs[t + 2], (widths[t], A, K), generator=gen)
        p = torch.rand(widths[t], A, K, generator=gen, dtype=DT)
        pr[rows] = p / p.sum(-1, keepdim=True) * (1 - stop)
    mu0 = torch.zeros(S, dtype=DT)
    mu0[: widths[0]] = torch.rand(widths[0], generator=gen, dtype=DT) + 0.1
    return TabularMDP(list(range(S)), list(range(A)), ns, pr, mu0 / mu0.sum(), 1.0)


def discounted_mdp(gen: torch.Generator, S: int = 5, A: int = 3, K: int = 2, gamma: float = 0.9) -> TabularMDP:
    """A random stochastic discounted MDP with cycles."""
    ns = torch.randint(0, S, (S, A, K), generator=gen)
    ns[:, 0, 0] = (torch.arange(S) + 1) % S  # a cycle through all states
    pr = torch.rand(S, A, K, generator=gen, dtype=DT)
    mu0 = torch.rand(S, generator=gen, dtype=DT) + 0.1
    return TabularMDP(list(range(S)), list(range(A)), ns, pr / pr.sum(-1, keepdim=True), mu0 / mu0.sum(), gamma)


def matching_mdp(n: int, m: int) -> TabularMDP:
    """The dynamic matching MDP (:mod:`dmd_torch.envs.matching`)."""
    from dmd_torch.envs import make_env

    return make_env("matching", n_agents=n, size=m).mdp


def one_state(A: int = 3, gamma: float = 0.9) -> TabularMDP:
    """One state, ``A`` self-loop actions, discounted: ``nu = softmax(c / alpha) / (1 - gamma)``."""
    return TabularMDP(
        [0], list(range(A)), torch.zeros(1, A, 1, dtype=torch.long), torch.ones(1, A, 1, dtype=DT),
        torch.ones(1, dtype=DT), gamma,
    )


KINDS = ("tree", "layered", "discounted", "one_state")


def make(kind: str, gen: torch.Generator) -> TabularMDP:
    return {
        "tree": lambda: sales_tree(2, 3),
        "layered": lambda: layered_mdp(gen),
        "discounted": lambda: discounted_mdp(gen),
        "one_state": lambda: one_state(),
    }[kind]()


def occupancy_scale(nu: torch.Tensor) -> float:
    return max(1.0, float(nu.sum(-1).max()))


def rewards(mdp: TabularMDP, gen: torch.Generator, B: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.rand(B, *mdp.shape, generator=gen, dtype=DT)


# ------------------------------------------------------------------------------------ structure
def test_tree_applicable() -> None:
    gen = torch.Generator().manual_seed(0)
    assert tree_applicable(sales_tree(2, 2)) and tree_applicable(sales_tree(3, 3))
    assert not tree_applicable(layered_mdp(gen))
    assert not tree_applicable(discounted_mdp(gen))
    assert not tree_applicable(one_state())
    # two parents for one state: not a tree
    nxt = torch.tensor([[1, 1], [-1, -1]])
    assert not tree_applicable(TabularMDP.deterministic(["r", "x"], [0, 1], nxt))
    # leaves at different depths: not a tree in the required sense
    nxt = torch.tensor([[1, -1], [-1, -1]])
    assert not tree_applicable(TabularMDP.deterministic(["r", "x"], [0, 1], nxt))


# ------------------------------------------------------------------------------------ forward
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("kind", KINDS)
def test_backends_agree(kind: str, alpha: float) -> None:
    gen = torch.Generator().manual_seed(10 * KINDS.index(kind) + ALPHAS.index(alpha))
    mdp = make(kind, gen)
    c = rewards(mdp, gen, 3)
    nu = regularized_occupancy(mdp, c, alpha, backend="newton")
    scale = occupancy_scale(nu)
    if kind == "tree":
        assert tree_applicable(mdp)
        tree = regularized_occupancy(mdp, c, alpha, backend="tree")
        torch.testing.assert_close(tree, nu, rtol=0, atol=1e-9)
        torch.testing.assert_close(regularized_occupancy(mdp, c, alpha), tree, rtol=0, atol=0)
    else:
        torch.testing.assert_close(regularized_occupancy(mdp, c, alpha), nu, rtol=0, atol=0)
    layer = regularized_occupancy(mdp, c, alpha, backend="cvxpylayers")
    torch.testing.assert_close(layer, nu, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("kind", KINDS)
def test_flow_constraints_and_positivity(kind: str) -> None:
    gen = torch.Generator().manual_seed(1)
    mdp = make(kind, gen)
    for alpha in ALPHAS:
        c = rewards(mdp, gen, 4, scale=5.0)
        for backend in ("tree", "newton") if kind == "tree" else ("newton",):
            nu = regularized_occupancy(mdp, c, alpha, backend=backend)
            assert flow_residual(mdp, nu).abs().max() <= 1e-11 * occupancy_scale(nu)
            assert (nu >= 0).all()
            reachable = solve_exact(mdp, torch.zeros(1, *mdp.shape, dtype=DT)).occupancy.sum(-1) > 0
            assert (nu.sum(-1)[:, reachable[0]] > 0).all()


@pytest.mark.parametrize("kind", KINDS)
def test_small_alpha_approaches_lp(kind: str) -> None:
    """``0 <= LP - c.nu_alpha <= alpha (H(nu_alpha) - H(nu*)) <= alpha T log(S A max(T, 1) / T)``."""
    gen = torch.Generator().manual_seed(2)
    mdp = make(kind, gen)
    c = rewards(mdp, gen, 5)
    lp = solve_exact(mdp, c).value
    gaps = []
    for alpha in (1e-2, 1e-3, 1e-4):
        nu = regularized_occupancy(mdp, c, alpha)
        T = float(nu.sum(dim=(-2, -1))[0])
        bound = alpha * T * math.log(mdp.num_states * mdp.num_actions * max(T, 1.0) / T)
        gap = lp - (c * nu).sum((-2, -1))
        assert (gap >= -1e-9).all() and (gap <= bound + 1e-9).all()
        gaps.append(float(gap.max()))
    assert gaps[-1] <= 1e-3 * (1 + float(lp.abs().max()))


def test_leading_dims_and_unreachable_states() -> None:
    gen = torch.Generator().manual_seed(3)
    base = layered_mdp(gen, widths=(2, 3))
    S, A = base.shape
    # one extra state that nothing reaches: it gets no flow
    ns = torch.cat([base.next_states, torch.zeros(1, A, base.next_states.shape[-1], dtype=torch.long)])
    pr = torch.cat([base.next_probs, torch.full((1, A, base.next_probs.shape[-1]), 0.5, dtype=DT)])
    mdp = TabularMDP(list(range(S + 1)), list(range(A)), ns, pr, torch.cat([base.mu0, torch.zeros(1, dtype=DT)]))
    c = rewards(mdp, gen, 6).view(2, 3, S + 1, A)
    nu = regularized_occupancy(mdp, c, 0.1, backend="newton")
    assert nu.shape == c.shape
    assert (nu[..., S, :] == 0).all()
    torch.testing.assert_close(nu.flatten(0, 1), regularized_occupancy(mdp, c.flatten(0, 1), 0.1), rtol=0, atol=1e-12)
    layer = regularized_occupancy(mdp, c, 0.1, backend="cvxpylayers")
    torch.testing.assert_close(layer, nu, rtol=0, atol=1e-5)
    x = c.clone().requires_grad_()
    torch.autograd.gradcheck(lambda x: regularized_occupancy(mdp, x, 0.1, backend="newton"), (x[:1, :1],))


# ------------------------------------------------------------------------------------ gradients
GRAD_CASES = (
    ("tree", lambda gen: sales_tree(2, 2), "tree"),
    ("tree", lambda gen: sales_tree(2, 2), "newton"),
    ("layered", lambda gen: layered_mdp(gen, widths=(2, 2), A=2), "newton"),
    ("discounted", lambda gen: discounted_mdp(gen, S=3, A=2), "newton"),
)


@pytest.mark.parametrize("alpha", (0.01, 0.3))
@pytest.mark.parametrize(("kind", "build", "backend"), GRAD_CASES)
def test_gradcheck(kind: str, build, backend: str, alpha: float) -> None:
    gen = torch.Generator().manual_seed(4)
    mdp = build(gen)
    c = (3 * alpha * torch.randn(2, *mdp.shape, generator=gen, dtype=DT)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: regularized_occupancy(mdp, x, alpha, backend=backend), (c,))


def _directional_fd(mdp: TabularMDP, c: torch.Tensor, w: torch.Tensor, dirs: torch.Tensor, alpha: float,
                    backend: str, h: float) -> torch.Tensor:
    """Fourth-order central differences of ``<w, nu(c + t v)>`` at ``t = 0``, one batched solve."""
    steps = torch.tensor([2.0, 1.0, -1.0, -2.0], dtype=DT) * h
    cs = c + steps.view(-1, 1, 1, 1) * dirs  # [4, k, S, A]
    with torch.no_grad():
        L = (regularized_occupancy(mdp, cs, alpha, backend=backend) * w).sum((-2, -1))
    return (-L[0] + 8 * L[1] - 8 * L[2] + L[3]) / (12 * h)


FD_CASES = (
    (lambda gen: sales_tree(2, 2), "tree"),
    (lambda gen: sales_tree(2, 2), "newton"),
    (lambda gen: sales_tree(2, 2), "cvxpylayers"),
    (lambda gen: layered_mdp(gen, widths=(2, 2), A=2), "newton"),
    (lambda gen: layered_mdp(gen, widths=(2, 2), A=2), "cvxpylayers"),
    (lambda gen: discounted_mdp(gen, S=3, A=2), "newton"),
    (lambda gen: discounted_mdp(gen, S=3, A=2), "cvxpylayers"),
    (lambda gen: matching_mdp(3, 3), "newton"),  # 100 states: its Newton systems eliminate the leaves first
)


@pytest.mark.parametrize("alpha", (0.01, 0.3))
@pytest.mark.parametrize(("build", "backend"), FD_CASES)
def test_finite_differences(build, backend: str, alpha: float) -> None:
    gen = torch.Generator().manual_seed(5)
    mdp = build(gen)
    c = 3 * alpha * torch.randn(*mdp.shape, generator=gen, dtype=DT)
    w = torch.randn(*mdp.shape, generator=gen, dtype=DT)
    dirs = torch.randn(3, *mdp.shape, generator=gen, dtype=DT)
    x = c.clone().requires_grad_()
    (regularized_occupancy(mdp, x, alpha, backend=backend) * w).sum().backward()
    ad = (x.grad * dirs).sum((-2, -1))
    # step: truncation error ~ (h / alpha)^4; the layer's solution noise (~1e-7) needs a larger h
    h = (0.05 if backend == "cvxpylayers" else 0.02) * alpha
    fd = _directional_fd(mdp, c, w, dirs, alpha, backend, h=h)
    tol = 1e-3 if backend == "cvxpylayers" else 1e-4
    assert (fd - ad).norm() <= tol * ad.norm()


@pytest.mark.parametrize("backend", ("auto", "newton", "cvxpylayers"))
@pytest.mark.parametrize("alpha", (0.01, 0.3, 1.0))
def test_one_state_closed_form(backend: str, alpha: float) -> None:
    g = 0.9
    mdp = one_state(4, g)
    gen = torch.Generator().manual_seed(6)
    c = (alpha * torch.randn(2, 1, 4, generator=gen, dtype=DT)).requires_grad_()
    w = torch.randn(2, 1, 4, generator=gen, dtype=DT)
    nu = regularized_occupancy(mdp, c, alpha, backend=backend)
    p = torch.softmax(c.detach() / alpha, -1)
    atol = 1e-5 / (1 - g) if backend == "cvxpylayers" else 1e-12  # relative to the occupancy scale
    torch.testing.assert_close(nu, p / (1 - g), rtol=0, atol=atol)
    (nu * w).sum().backward()
    jac = (torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)) / (alpha * (1 - g))  # [2, 1, 4, 4]
    expected = (jac * w.unsqueeze(-1)).sum(-2)
    torch.testing.assert_close(c.grad, expected, rtol=1e-4 if backend == "cvxpylayers" else 1e-9, atol=1e-9)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside cvxpylayers 1.2
def test_layer_backward_right_at_moderate_alpha_and_warns_below() -> None:
    mdp = discounted_mdp(torch.Generator().manual_seed(1), S=4, A=3)
    gen = torch.Generator().manual_seed(0)
    c = torch.rand(3, *mdp.shape, generator=gen, dtype=DT)
    w = torch.randn(3, *mdp.shape, generator=gen, dtype=DT)

    def grad(alpha: float, backend: str = "cvxpylayers", **options) -> torch.Tensor:
        x = c.clone().requires_grad_()
        (regularized_occupancy(mdp, x, alpha, backend=backend, **options) * w).sum().backward()
        return x.grad

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        own = grad(0.3, layer_backward=True)
    exact = grad(0.3, backend="newton")
    torch.testing.assert_close(own, exact, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad(0.3), exact, rtol=1e-5, atol=1e-7)
    with pytest.warns(UserWarning, match="unreliable at alpha=0.01"):
        grad(0.01, layer_backward=True)
    # where diffcp's derivative breaks down (near-zero occupancies), the default backward holds
    exact = grad(0.01, backend="newton")
    assert exact.abs().max() > 1  # an informative instance (diffcp's derivative is off by ~1e3 here)
    torch.testing.assert_close(grad(0.01), exact, rtol=0, atol=1e-4 * float(exact.abs().max()))


# ------------------------------------------------------------------------------------ errors
def test_bad_inputs_raise() -> None:
    gen = torch.Generator().manual_seed(8)
    mdp = discounted_mdp(gen)
    c = rewards(mdp, gen, 2)
    for alpha in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="alpha must be positive and finite"):
            regularized_occupancy(mdp, c, alpha)
    with pytest.raises(TypeError, match="alpha must be a real number"):
        regularized_occupancy(mdp, c, "0.1")
    bad = c.clone()
    bad[0, 1, 2] = math.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        regularized_occupancy(mdp, bad, 0.1)
    with pytest.raises(ValueError, match=r"shape \[\.\.\., S, A\]"):
        regularized_occupancy(mdp, c[..., :-1], 0.1)
    with pytest.raises(ValueError, match="unknown backend 'lp'; allowed: 'auto', 'tree', 'newton', 'cvxpylayers'"):
        regularized_occupancy(mdp, c, 0.1, backend="lp")
    tree_needs = "backend 'tree' does not apply here: it is not a finite-horizon MDP.*allowed here: auto, newton, cvxpylayers"
    with pytest.raises(ValueError, match=tree_needs):
        regularized_occupancy(mdp, c, 0.1, backend="tree")
    with pytest.raises(ValueError, match="backend 'tree' does not apply here: its transitions are not deterministic"):
        regularized_occupancy(layered_mdp(gen), rewards(layered_mdp(gen), gen, 1), 0.1, backend="tree")
    with pytest.raises(ValueError, match="backend 'newton' takes no option.*eps; allowed: tol, max_iter"):
        regularized_occupancy(mdp, c, 0.1, backend="newton", eps=1e-3)
    with pytest.raises(TypeError, match="floating-point"):
        regularized_occupancy(mdp, torch.ones(2, *mdp.shape, dtype=torch.long), 0.1)
    tree = sales_tree(2, 2)
    c_tree = rewards(tree, gen, 2)
    with pytest.raises(ValueError, match="backend 'tree' takes no option.* tol; allowed: none"):
        regularized_occupancy(tree, c_tree, 0.1, backend="tree", tol=1e-10)
    # 'auto' picks the tree's closed form here, and an option the tree does not take is an error, not dropped
    with pytest.raises(ValueError, match="backend 'tree' takes no option.* tol"):
        regularized_occupancy(tree, c_tree, 0.1, tol=1e-10)
    for options, match in (({"tol": 0.0}, "newton tol"), ({"tol": -1e-3}, "newton tol"),
                           ({"max_iter": 2.5}, "newton max_iter"), ({"max_iter": -1}, "newton max_iter")):
        with pytest.raises(ValueError, match=match):
            regularized_occupancy(mdp, c, 0.1, backend="newton", **options)
    for options, match in (({"layer_backward": "yes"}, "layer_backward"), ({"check_tol": 0}, "check_tol"),
                           ({"solver_args": [1]}, "solver_args"), ({"max_iter": 3}, "takes no option.*max_iter")):
        with pytest.raises(ValueError, match=match):
            regularized_occupancy(mdp, c, 0.1, backend="cvxpylayers", **options)


def test_dispatcher_picks_one_small_class_per_backend() -> None:
    """auto = the first of tree, newton that applies; each backend declares where it applies and
    takes typed options; a built backend can be passed in."""
    gen = torch.Generator().manual_seed(12)
    assert set(BACKENDS) == {"tree", "newton", "cvxpylayers"} and AUTO == ("tree", "newton")
    assert all(issubclass(cls, Backend) and cls.name == name for name, cls in BACKENDS.items())
    tree, cyclic = sales_tree(2, 2), discounted_mdp(gen)
    assert choose_backend(tree) is BACKENDS["tree"] and choose_backend(cyclic) is BACKENDS["newton"]
    assert BACKENDS["tree"].why_not(cyclic) and BACKENDS["newton"].why_not(cyclic) is None
    solver = make_backend(cyclic, "newton", {"tol": 1e-10})
    assert solver.options == NewtonOptions(tol=1e-10, max_iter=100)
    assert make_backend(cyclic, "cvxpylayers").options == CvxpyLayersOptions()
    c = rewards(cyclic, gen, 2)
    torch.testing.assert_close(regularized_occupancy(cyclic, c, 0.1, backend=solver),
                               regularized_occupancy(cyclic, c, 0.1, tol=1e-10), rtol=0, atol=0)
    with pytest.raises(ValueError, match="not beside a built backend"):
        regularized_occupancy(cyclic, c, 0.1, backend=solver, tol=1e-8)


def test_newton_system_size_is_the_order_the_newton_step_factors() -> None:
    """0 where the tree's closed form applies or another backend is asked for; all S states on a
    cyclic MDP; the inner states where the leaves are eliminated first (matching 3 x 3: 27 of 100)."""
    tree, cyclic = sales_tree(2, 2), discounted_mdp(torch.Generator().manual_seed(3))
    assert newton_system_size(tree) == 0 and newton_system_size(cyclic, "cvxpylayers") == 0
    assert newton_system_size(cyclic) == newton_system_size(cyclic, "newton") == cyclic.num_states
    mdp = matching_mdp(3, 3)
    plan = leaf_elimination(mdp)
    assert plan is not None and newton_system_size(mdp) == plan.inner.numel() == 27 < mdp.num_states


def test_newton_failure_raises_naming_entries() -> None:
    gen = torch.Generator().manual_seed(9)
    mdp = layered_mdp(gen, widths=(2, 3, 3))
    c = rewards(mdp, gen, 6, scale=3.0).view(2, 3, *mdp.shape)
    with pytest.raises(RegularizedSolveError, match=r"newton: .*max_iter=1 .*batch entries \[\(0, 0\)") as info:
        regularized_occupancy(mdp, c, 0.01, backend="newton", max_iter=1, tol=1e-15)
    assert isinstance(info.value, RuntimeError)
    assert info.value.entries and all(len(e) == 2 for e in info.value.entries)


def test_layer_failure_raises() -> None:
    gen = torch.Generator().manual_seed(10)
    mdp = discounted_mdp(gen, S=3, A=2)
    c = rewards(mdp, gen, 2)
    with pytest.raises(RegularizedSolveError, match=r"cvxpylayers: .*batch entries \[0, 1\]"):
        regularized_occupancy(mdp, c, 0.1, backend="cvxpylayers", solver_args={"max_iter": 2})


# ------------------------------------------------------------------------------------ settings
SETTINGS = (("seq_sales", 2, 2), ("scheduling", 2, 3), ("gridworld", 2, 3))


@pytest.mark.parametrize(("name", "n", "size"), SETTINGS)
def test_settings_backends_agree(name: str, n: int, size: int) -> None:
    make_env = pytest.importorskip("dmd_torch.envs").make_env
    setting = make_env(name, n_agents=n, size=size)
    mdp = setting.mdp
    gen = torch.Generator().manual_seed(11)
    r = setting.rewards(setting.sample_types(3, gen))  # [B, n, S, A]
    c = r.sum(1) + torch.rand(*mdp.shape, generator=gen, dtype=DT) * 2 - 1
    assert tree_applicable(mdp) == (name != "gridworld")
    for alpha in (0.01, 0.1):
        native = regularized_occupancy(mdp, c, alpha)
        scale = occupancy_scale(native)
        newton = regularized_occupancy(mdp, c, alpha, backend="newton")
        torch.testing.assert_close(newton, native, rtol=0, atol=1e-9 * scale)
        layer = regularized_occupancy(mdp, c, alpha, backend="cvxpylayers")
        torch.testing.assert_close(layer, native, rtol=0, atol=1e-5 * scale)


# ------------------------------------------------------------------------------------ accelerations
def follower_problems(setting, gen: torch.Generator, profiles: int) -> torch.Tensor:
    """The ``n + 1`` problems of ``profiles`` profiles under random boosts: ``[P, n + 1, S, A]``."""
    from dmd_torch.follower import affine_rewards

    r = setting.rewards(setting.sample_types(profiles, gen))
    boosts = torch.rand(*setting.mdp.shape, generator=gen, dtype=DT)
    return affine_rewards(r, torch.ones(setting.n_agents, dtype=DT), boosts)


@pytest.mark.parametrize("backend", ("auto", "newton"))
@pytest.mark.parametrize(("name", "n", "size", "alpha"), (("gridworld", 5, 8, 0.01), ("gridworld", 3, 4, 0.05),
                                                          ("seq_sales", 3, 2, 0.01), ("matching", 2, 3, 0.02)))
def test_grouped_solve_equals_ungrouped(name: str, n: int, size: int, alpha: float, backend: str) -> None:
    """Starting the problems without an agent from the full problem's duals changes nothing but time."""
    from dmd_torch.envs import make_env

    setting = make_env(name, n_agents=n, size=size)
    c = follower_problems(setting, torch.Generator().manual_seed(3), 20)
    x = c.clone().requires_grad_()
    grouped = regularized_occupancy(setting.mdp, x, alpha, backend=backend, grouped=True)
    flat = regularized_occupancy(setting.mdp, c, alpha, backend=backend)
    scale = occupancy_scale(flat)
    torch.testing.assert_close(grouped, flat, rtol=0, atol=1e-9 * scale)
    assert (flow_residual(setting.mdp, grouped).abs().amax(-1) <= 1e-11 * scale).all()
    w = torch.randn(*c.shape, generator=torch.Generator().manual_seed(2), dtype=DT)
    (grouped * w).sum().backward()
    y = c.clone().requires_grad_()
    (regularized_occupancy(setting.mdp, y, alpha, backend=backend) * w).sum().backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-6, atol=1e-6 * float(y.grad.abs().max()))


def test_grouped_solve_solves_hard_starts() -> None:
    """From the full problem's duals, some problems without an agent start with flows of e^-300 and
    Newton steps of length 1e18. Without the step cap, the Jacobi fallback and the re-solve from the
    warm start, about one batch in four of these stalled."""
    from dmd_torch.envs import make_env

    setting = make_env("gridworld", n_agents=5, size=8)
    for seed in range(10):
        c = follower_problems(setting, torch.Generator().manual_seed(seed), 20)
        grouped = regularized_occupancy(setting.mdp, c, 0.01, grouped=True)
        flat = regularized_occupancy(setting.mdp, c, 0.01)
        torch.testing.assert_close(grouped, flat, rtol=0, atol=1e-9 * occupancy_scale(flat))


def test_grouped_needs_a_group_dimension() -> None:
    mdp = discounted_mdp(torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="grouped=True needs"):
        regularized_occupancy(mdp, torch.zeros(*mdp.shape, dtype=DT), 0.1, grouped=True)


def test_balance_equates_outflow_and_inflow_of_one_state() -> None:
    """The balancing move of a state that nothing else moves makes its outflow equal its inflow."""
    from dmd_torch.regularized.flow import flow_transpose
    from dmd_torch.regularized.newton import _balance

    gen = torch.Generator().manual_seed(6)
    S, A = 6, 3
    nxt = torch.randint(0, S, (S, A), generator=gen)
    nxt[:, 0] = (torch.arange(S) + 1) % S  # a cycle through all states, no self-loops below
    nxt = torch.where(nxt == torch.arange(S).unsqueeze(-1), (nxt + 1) % S, nxt)
    mdp = TabularMDP.deterministic(list(range(S)), list(range(A)), nxt, start=0, gamma=0.9)
    alpha = 0.05
    c = torch.rand(1, S, A, generator=gen, dtype=DT)
    V = 2.0 * torch.randn(1, S, generator=gen, dtype=DT)  # far from optimal: flows out of balance
    nu = ((c - flow_transpose(mdp, V)) / alpha - 1).exp()
    u = _balance(mdp, nu, alpha)
    moved = [s for s in range(1, S) if u[0, s] != 0]  # state 0 also receives mu0
    assert moved, "the random start should leave some state out of balance by more than e"
    out, inflow = nu.sum(-1), mdp.mu0 + mdp.gamma * mdp.inflow(nu)
    ratio = (out / inflow).log().abs()
    assert (ratio[u != 0] > 1).all() and (u[ratio > 1] != 0).all()
    assert (inflow < 1e-16 * out).any(), "some state's inflow should vanish next to its outflow (out - res cancels)"
    for s in moved:
        one = torch.zeros_like(u)
        one[0, s] = u[0, s]
        nu1 = ((c - flow_transpose(mdp, V + one)) / alpha - 1).exp()
        out1 = nu1.sum(-1)[0, s]
        torch.testing.assert_close(out1, out1 - flow_residual(mdp, nu1)[0, s], rtol=1e-10, atol=0)


def test_vjp_skips_entries_without_gradient() -> None:
    from dmd_torch.regularized import implicit_occupancy_vjp

    gen = torch.Generator().manual_seed(7)
    mdp = discounted_mdp(gen)
    nu = regularized_occupancy(mdp, rewards(mdp, gen, 4), 0.1)
    g = torch.randn(4, *mdp.shape, generator=gen, dtype=DT)
    g[1] = 0.0
    g[3] = 0.0
    full = implicit_occupancy_vjp(mdp, nu, 0.1, g)
    assert (full[1] == 0).all() and (full[3] == 0).all()
    for k in (0, 2):
        torch.testing.assert_close(full[k], implicit_occupancy_vjp(mdp, nu[k : k + 1], 0.1, g[k : k + 1])[0])


def test_newton_solve_in_chunks_equals_one_block() -> None:
    """The Newton systems solved a few matrices at a time give the one-block solution, which solves them."""
    gen = torch.Generator().manual_seed(5)
    mdp = discounted_mdp(gen, S=7)
    w = torch.rand(9, *mdp.shape, generator=gen, dtype=torch.float64) + 0.1
    rhs = torch.randn(9, mdp.num_states, generator=gen, dtype=torch.float64)
    x, diag = flow_newton_solve(mdp, w, rhs)
    x2, diag2 = flow_newton_solve(mdp, w, rhs, chunk_bytes=2 * 7 * 7 * 8)  # 2 matrices per chunk
    H = flow_hessian(mdp, w)
    torch.testing.assert_close(torch.linalg.solve(H, rhs.unsqueeze(-1)).squeeze(-1), x, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(x2, x, rtol=0, atol=0)
    torch.testing.assert_close(diag2, H.diagonal(dim1=-2, dim2=-1), rtol=0, atol=0)
    torch.testing.assert_close(diag, diag2, rtol=0, atol=0)


# ------------------------------------------------------------------------------------ the fused revenue
def _revenue_of_the_solution(mdp: TabularMDP, r: torch.Tensor, lw: torch.Tensor, b: torch.Tensor, alpha: float,
                             backend: str) -> torch.Tensor:
    """The summed payments of Definition 3.1 read off the regularized follower's solution."""
    sol = RegularizedFollower(alpha, backend).respond(mdp, r, lw, b, without=True)
    return payments(sol.agent_values, sol.weights, sol.asw, sol.asw_without).sum(-1)


def _tree_case(gen: torch.Generator, n: int, m: int, P: int = 5) -> tuple[TabularMDP, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A history tree with rewards of both signs, random weights and boosts."""
    mdp = sales_tree(n, m)
    r = torch.randn(P, n, *mdp.shape, generator=gen, dtype=DT)
    lw = 0.5 * torch.randn(n, generator=gen, dtype=DT)
    b = torch.randn(mdp.shape, generator=gen, dtype=DT)
    return mdp, r, lw, b


@pytest.mark.parametrize("alpha", (0.01, 0.3))
@pytest.mark.parametrize(("n", "m"), ((2, 2), (3, 3), (1, 2)))
def test_tree_revenue_equals_the_payments_of_the_solution(n: int, m: int, alpha: float) -> None:
    """Value and gradient (along random output weights) of the closed form equal those of the payments
    of the follower's solution: with the ``tree`` backend to rounding, with ``newton`` to its tolerance."""
    gen = torch.Generator().manual_seed(6)
    mdp, r, lw, b = _tree_case(gen, n, m)
    out = torch.randn(r.shape[0], generator=gen, dtype=DT)
    lw, b = lw.requires_grad_(), b.requires_grad_()
    fused = tree_revenue(mdp, r, lw, b, alpha)
    grads = torch.autograd.grad((fused * out).sum(), (lw, b))
    for backend, tol in (("tree", 1e-11), ("newton", 1e-7)):
        want = _revenue_of_the_solution(mdp, r, lw, b, alpha, backend)
        torch.testing.assert_close(fused, want, rtol=0, atol=tol * (1 + float(want.detach().abs().max())))
        for got, expected in zip(grads, torch.autograd.grad((want * out).sum(), (lw, b))):
            torch.testing.assert_close(got, expected, rtol=0, atol=tol * (1 + float(expected.abs().max())))


@pytest.mark.parametrize("alpha", (0.01, 0.3))
def test_tree_revenue_gradcheck(alpha: float) -> None:
    """Finite differences of the closed form in ``log w`` and ``b`` (float64)."""
    gen = torch.Generator().manual_seed(7)
    mdp, r, lw, b = _tree_case(gen, 2, 3, P=3)
    b = 3 * alpha * b
    assert torch.autograd.gradcheck(lambda x, y: tree_revenue(mdp, 3 * alpha * r, x, y, alpha),
                                    (lw.requires_grad_(), b.requires_grad_()))


def test_tree_revenue_only_on_trees_and_only_where_asked() -> None:
    gen = torch.Generator().manual_seed(8)
    mdp = layered_mdp(gen)
    with pytest.raises(ValueError, match="tree_revenue needs a history tree: its transitions are not deterministic"):
        tree_revenue(mdp, rewards(mdp, gen, 2).unsqueeze(1), torch.zeros(1, dtype=DT), torch.zeros(mdp.shape, dtype=DT), 0.1)
    tree, r, lw, b = _tree_case(gen, 2, 2)
    with pytest.raises(ValueError, match=r"tree_revenue needs r \[P, n, S, A\], log_weights \[n\].*got \[5, 2, 4, 3\], \[3\]"):
        tree_revenue(tree, r, torch.zeros(3, dtype=DT), b, 0.1)
    lw.requires_grad_()  # the boosts are not asked for: no gradient for them, the weights' unchanged
    (g_lw,) = torch.autograd.grad(tree_revenue(tree, r, lw, b, 0.1).sum(), (lw,))
    (want,) = torch.autograd.grad(tree_revenue(tree, r, lw, b.clone().requires_grad_(), 0.1).sum(), (lw,))
    torch.testing.assert_close(g_lw, want, rtol=0, atol=0)
