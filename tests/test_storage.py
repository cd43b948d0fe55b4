import json

import pytest
import torch

from dmd_torch import AMA, load_mechanism, make_env, save_mechanism


def _random_ama(env, gen):
    n = env.n_agents
    return AMA(env, weights=torch.rand(n, generator=gen, dtype=torch.float64) + 0.1,
               boosts=torch.randn(env.mdp.shape, generator=gen, dtype=torch.float64))


@pytest.mark.parametrize("name, dist", [("seq_sales", "asymmetric"), ("scheduling", "symmetric"), ("gridworld", "one_cell")])
def test_round_trip(tmp_path, gen, name, dist):
    env = make_env(name, n_agents=2, size=3, distribution=dist)
    ama = _random_ama(env, gen)
    j, p = save_mechanism(ama, tmp_path)
    data = json.loads(j.read_text())
    assert data["env"] == env.config() and len(data["boosts"]) == env.mdp.num_states
    for path in (j, p, tmp_path):
        back = load_mechanism(path)
        torch.testing.assert_close(back.weights, ama.weights)
        torch.testing.assert_close(back.boosts, ama.boosts)
    assert not list(tmp_path.glob(".*tmp"))


def test_labels_formats(tmp_path, gen):
    env = make_env("gridworld", n_agents=2, size=3)
    data = json.loads(save_mechanism(AMA(env), tmp_path)[0].read_text())
    assert data["states"][1] == [0, 1] and data["actions"] == ["up", "down", "left", "right"]
    assert "gamma" in data["env"]
    env = make_env("seq_sales", n_agents=2, size=2)
    data = json.loads(save_mechanism(AMA(env), tmp_path)[0].read_text())
    assert data["states"] == [[], [0], [1], [2]] and data["actions"] == [0, 1, 2]


def test_files_of_earlier_versions_name_the_setting(tmp_path, gen):
    """A mechanism.json whose env block names a registered setting (no _target_) still loads."""
    env = make_env("gridworld", n_agents=2, size=3)
    ama = _random_ama(env, gen)
    data = json.loads(save_mechanism(ama, tmp_path)[0].read_text())
    data["env"] = {"name": "gridworld", "n_agents": 2, "size": 3, "distribution": "one_cell", "gamma": 0.9}
    (tmp_path / "old.json").write_text(json.dumps(data))
    torch.testing.assert_close(load_mechanism(tmp_path / "old.json").boosts, ama.boosts)


def test_permuted_labels_load_correctly(tmp_path, gen):
    env = make_env("seq_sales", n_agents=2, size=2)
    ama = _random_ama(env, gen)
    data = json.loads(save_mechanism(ama, tmp_path)[0].read_text())
    sp, ap = [3, 1, 0, 2], [2, 0, 1]
    data["states"] = [data["states"][k] for k in sp]
    data["actions"] = [data["actions"][k] for k in ap]
    data["boosts"] = [[data["boosts"][s][a] for a in ap] for s in sp]
    (tmp_path / "perm.json").write_text(json.dumps(data))
    back = load_mechanism(tmp_path / "perm.json")
    torch.testing.assert_close(back.boosts, ama.boosts)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d.update(weights=[1.0, 0.0]), "weights must be > 0"),
        (lambda d: d.update(weights=[1.0, float("nan")]), "NaN or inf"),
        (lambda d: d.update(boosts=d["boosts"][:-1], states=d["states"][:-1]), r"boosts must be \[states\]\[actions\] = \[4\]\[3\]"),
        (lambda d: d["states"].__setitem__(0, [7, 7]), r"unknown state label"),
        (lambda d: d["states"].__setitem__(0, [1]), r"repeats state label\(s\) \[\[1\]\]"),
        (lambda d: d["actions"].__setitem__(0, "up"), r"unknown action label"),
        (lambda d: d.pop("boosts"), "lacks boosts"),
        (lambda d: d["env"].update(distribution="normal"), "allowed: symmetric, asymmetric"),
    ],
)
def test_bad_mechanism_files(tmp_path, edit, match):
    env = make_env("seq_sales", n_agents=2, size=2)
    data = json.loads(save_mechanism(AMA(env), tmp_path)[0].read_text())
    edit(data)
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match):
        load_mechanism(tmp_path / "bad.json")


def test_state_dict_for_other_setting_is_rejected(tmp_path):
    save_mechanism(AMA(make_env("seq_sales", n_agents=2, size=2)), tmp_path)
    sd = torch.load(tmp_path / "mechanism.pt", weights_only=True)
    with pytest.raises(ValueError, match="state_dict is for setting"):
        AMA(make_env("seq_sales", n_agents=2, size=2, distribution="asymmetric")).load_state_dict(sd)
