import pytest
import torch

from dmd_torch import make_env
from dmd_torch.envs.scheduling import queue_makespan


@pytest.mark.parametrize("n, m", [(2, 2), (5, 3), (3, 1)])
def test_sales_state_space_and_unit_demand(gen, n, m):
    env = make_env("seq_sales", n_agents=n, size=m)
    S, A = env.mdp.shape
    assert S == sum((n + 1) ** t for t in range(m)) and A == n + 1
    assert env.mdp.action_labels == list(range(n + 1))
    types = env.sample_types(4, gen)
    r = env.rewards(types)
    for s, h in enumerate(env.mdp.state_labels):
        for i in range(n):
            expect = types[:, i, 0] if (i + 1) not in h else torch.zeros(4, dtype=torch.float64)
            torch.testing.assert_close(r[:, i, s, i + 1], expect)
            assert (r[:, i, s, [a for a in range(A) if a != i + 1]] == 0).all()


def test_asymmetric_sales_support(gen):
    env = make_env("seq_sales", n_agents=4, size=2, distribution="asymmetric")
    v = env.sample_types(20000, gen)[:, :, 0]
    tops = 1 / torch.arange(1, 5, dtype=torch.float64)
    assert (v <= tops).all() and (v.max(0).values > 0.99 * tops).all()
    assert env.optimize_weights and not make_env("seq_sales").optimize_weights


def test_sampler_is_seeded():
    env = make_env("gridworld", n_agents=3, size=3)
    a = env.sample_types(10, torch.Generator().manual_seed(5))
    b = env.sample_types(10, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_scheduling_structure_and_rewards(gen):
    env = make_env("scheduling", n_agents=3, size=4)
    assert env.mdp.shape == (1 + 3 + 9 + 27, 3) and env.objective.name == "makespan" and not env.objective.maximize
    costs = env.sample_types(2, gen)
    r = env.rewards(costs)
    s = env.mdp.state_labels.index((2, 1))  # third task
    torch.testing.assert_close(r[:, 1, s, 1], -costs[:, 1, 2])
    assert (r[:, 1, s, 0] == 0).all()


def test_queue_makespan_unclamped_and_clamped():
    # one worker does tasks of cost 0.5 then 3: unclamped carries credit (0.5 - 1 = -0.5, +3 = 2.5)
    costs = torch.tensor([[[0.5, 3.0]]], dtype=torch.float64)
    assign = torch.tensor([[0, 0]])
    assert queue_makespan(costs, assign).item() == pytest.approx(2.5)
    assert queue_makespan(costs, assign, clamped=True).item() == pytest.approx(3.0)
    # two workers: tasks 2,1,1 -> R = [2-1-1+... ] worked by hand
    costs = torch.tensor([[[2.0, 0.0, 1.0], [0.0, 1.0, 0.0]]], dtype=torch.float64)
    assign = torch.tensor([[0, 1, 0]])  # R0: 2 -> 1 -> 0+1 = 1; R1: 0 -> 1 -> 0
    assert queue_makespan(costs, assign).item() == pytest.approx(1.0)


def test_makespan_loss_vector_is_linear_in_occupancy(gen):
    from dmd_torch.exact import solve_exact

    env = make_env("scheduling", n_agents=2, size=3, distribution="asymmetric")
    types = env.sample_types(5, gen)
    sol = solve_exact(env.mdp, env.rewards(types).sum(1))
    span = (env.loss_vector(types) * sol.occupancy).sum((-2, -1))
    # replay the chosen assignment by following the policy from the start
    for b in range(5):
        s, seq = 0, []
        for _ in range(3):
            a = sol.policy[b, s].item()
            seq.append(a)
            if len(seq) < 3:
                s = env.mdp.state_labels.index(tuple(x + 1 for x in seq))
        assert span[b].item() == pytest.approx(queue_makespan(types[b:b + 1], torch.tensor([seq])).item())


def test_gridworld_torus_and_rewards(gen):
    env = make_env("gridworld", n_agents=2, size=3)
    mdp = env.mdp
    assert mdp.gamma == 0.9 and mdp.action_labels == ["up", "down", "left", "right"]
    s = mdp.state_labels.index((0, 0))
    nxt = [mdp.state_labels[mdp.next_states[s, a, 0]] for a in range(4)]
    assert nxt == [(0, 2), (0, 1), (2, 0), (1, 0)]
    types = env.sample_types(100, gen)
    assert ((types > 0).sum(-1) == 1).all() and (types[:, :, 0] == 0).all()
    r = env.rewards(types)
    goal = types[0, 0].argmax().item()
    entering = (mdp.next_states[..., 0] == goal)
    torch.testing.assert_close(r[0, 0][entering], types[0, 0, goal].expand(int(entering.sum())))
    assert (r[0, 0][~entering] == 0).all()
    uni = make_env("gridworld", n_agents=2, size=3, distribution="uniform").sample_types(10, gen)
    assert (uni[:, :, 1:] > 0).all() and (uni[:, :, 0] == 0).all()


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("auction",), {}, "unknown setting 'auction'; allowed: seq_sales, scheduling, gridworld"),
        (("seq_sales",), {"distribution": "normal"}, "allowed: symmetric, asymmetric"),
        (("gridworld",), {"distribution": "symmetric"}, "allowed: one_cell, uniform"),
        (("seq_sales",), {"n_agents": 0}, "n_agents must be an integer >= 1"),
        (("scheduling",), {"size": 0}, "size must be an integer >= 1"),
        (("gridworld",), {"gamma": 1.0}, r"gamma must lie in the open interval \(0, 1\)"),
        (("gridworld",), {"gamma": 0.0}, "gamma"),
        (("seq_sales",), {"gamma": 0.5}, "unknown option"),
        (("gridworld",), {"size": 1}, "gridworld size must be an integer >= 2"),
        (("scheduling",), {"clamped": "yes"}, "clamped must be true or false"),
    ],
)
def test_bad_settings(args, kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        make_env(*args, **kwargs)
    assert "\n" not in str(info.value)


def test_bad_types_rejected():
    env = make_env("seq_sales", n_agents=2, size=2)
    with pytest.raises(ValueError, match="NaN or inf"):
        env.checked_rewards(torch.full((3, 2, 1), float("inf"), dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[B, 2, 1\]"):
        env.checked_rewards(torch.zeros(3, 3, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="floating-point"):
        env.checked_rewards(torch.zeros(3, 2, 1, dtype=torch.long))


@pytest.mark.parametrize("clamped", [False, True])
@pytest.mark.parametrize("n,T", [(2, 1), (2, 4), (3, 3)])
def test_makespan_loss_vector_matches_queue_simulation(gen, n, T, clamped):
    """The tree-built loss vector equals simulating every complete assignment with queue_makespan."""
    env = make_env("scheduling", n_agents=n, size=T, distribution="asymmetric", clamped=clamped)
    types = env.sample_types(7, gen)
    q = env.loss_vector(types)
    S, A = env.mdp.shape
    expected = torch.zeros_like(q)
    for s, h in enumerate(env.mdp.state_labels):
        if len(h) == T - 1:
            for a in range(A):
                seq = torch.tensor([[w - 1 for w in h] + [a]]).expand(7, T)  # the same assignment per profile
                expected[:, s, a] = queue_makespan(types, seq, clamped)
    torch.testing.assert_close(q, expected, rtol=0, atol=1e-12)
    assert (q[:, [s for s, h in enumerate(env.mdp.state_labels) if len(h) < T - 1]] == 0).all()


@pytest.mark.parametrize("clamped", [False, True])
def test_makespan_along_the_path_equals_loss_vector(gen, clamped):
    """Scheduling's policy_loss (queue replayed along each policy's path) = <loss_vector, nu>."""
    from dmd_torch.exact import policy_occupancy

    env = make_env("scheduling", n_agents=3, size=4, distribution="asymmetric", clamped=clamped)
    types = env.sample_types(40, gen)
    policy = torch.randint(0, 3, (40, env.mdp.num_states), generator=gen)
    occ = policy_occupancy(env.mdp, policy)
    expect = (env.loss_vector(types) * occ.dense()).sum((-2, -1))
    torch.testing.assert_close(env.policy_loss(types, occ), expect, rtol=1e-14, atol=1e-14)
    # leading dimensions of the assignments (e.g. candidate mechanisms) broadcast: every assignment
    # for every profile, whose diagonal is each profile's own
    workers = occ.path % 3  # [B, T]
    every = queue_makespan(types, workers.unsqueeze(1).expand(40, 40, 4), clamped)  # [B (assignment), B (profile)]
    torch.testing.assert_close(every.diagonal(), queue_makespan(types, workers, clamped), rtol=0, atol=0)


@pytest.mark.parametrize(
    "name, options, key",
    [
        ("seq_sales", {}, "seq_sales_sym"),
        ("seq_sales", {"distribution": "asymmetric"}, "seq_sales_asym"),
        ("scheduling", {}, "scheduling_sym"),
        ("scheduling", {"distribution": "asymmetric", "clamped": True}, "scheduling_asym_clamped"),
        ("gridworld", {}, "gridworld"),
        ("gridworld", {"distribution": "uniform", "gamma": 0.8}, "gridworld_uniform"),
    ],
)
def test_settings_carry_their_knowledge(name, options, key):
    """Report key, config block (rebuilds the same setting), defaults from the constructor, search box."""
    from dmd_torch.envs import ENVS, setting_from_config

    env = make_env(name, n_agents=2, size=3, **options)
    assert env.report_key == key and isinstance(env, ENVS[name])
    block = env.config()
    assert block["_target_"].endswith(type(env).__qualname__) and block["n_agents"] == 2 and block["size"] == 3
    again = setting_from_config(block)
    assert again.config() == block and again.mdp.shape == env.mdp.shape
    assert setting_from_config({"name": name, "n_agents": 2, "size": 3, **options}).config() == block
    low, high = env.search_box()
    assert torch.equal(high, torch.full(env.mdp.shape, env.boost_range, dtype=torch.float64)) and torch.equal(low, -high)
    assert (env.known_optimum() is not None) == (name == "seq_sales")


def test_known_optimum_is_myerson():
    env = make_env("seq_sales", n_agents=3, size=2, distribution="asymmetric")
    w, b = env.known_optimum()
    assert torch.equal(w, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(b[:, 1:], -torch.tensor([1.0, 1 / 2, 1 / 3], dtype=torch.float64).expand(b.shape[0], 3) / 2)
    assert (b[:, 0] == 0).all()


@pytest.mark.parametrize(
    "block, match",
    [
        ({}, "needs _target_ .* or name"),
        ({"_target_": "no_such_module.Thing"}, "cannot import env _target_ 'no_such_module.Thing'"),
        ({"_target_": "collections.OrderedDict"}, "is not a subclass of dmd_torch.Setting"),
        ({"name": "seq_sales", "bogus": 1}, "unknown option.* bogus for seq_sales.*allowed: n_agents, size, distribution"),
        ({"_target_": "dmd_torch.envs.Gridworld", "clamped": True}, "unknown option.* clamped for gridworld"),
    ],
)
def test_bad_env_blocks(block, match):
    from dmd_torch.envs import setting_from_config

    with pytest.raises(ValueError, match=match) as info:
        setting_from_config(block)
    assert "\n" not in str(info.value)
