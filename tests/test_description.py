"""Tests of dmd_torch.description: each setting describes a mechanism in its own terms, checked
against the mechanism itself."""

from __future__ import annotations

import re

import pytest
import torch

from dmd_torch import AMA, make_env
from dmd_torch.description import markdown_table, write_description


def _numbers(line: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+\.\d+", line)]


def test_myerson_shows_the_reserves_c_i_over_2(tmp_path):
    env = make_env("seq_sales", n_agents=3, size=2, distribution="asymmetric")
    md, png = write_description(AMA.known_optimum(env), tmp_path)
    text = md.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| [")]
    assert len(rows) == env.mdp.num_states
    assert _numbers(rows[0]) == pytest.approx([1 / 2, 1 / 4, 1 / 6], abs=5e-5)  # c_i / 2 with c_i = 1/i
    assert "has one" in next(r for r in rows if r.startswith("| [1]"))  # bidder 1 holds an item there
    assert _numbers(next(line for line in text.splitlines() if line.startswith("| Myerson"))) == pytest.approx([0.5, 0.25, 1 / 6], abs=5e-5)
    assert png.read_bytes()[:4] == b"\x89PNG" and "![mechanism](mechanism.png)" in text


def test_reserves_follow_weights_and_boosts():
    """reserve_i(h) = (b(h, 0) - b(h, i)) / w_i for any AMA."""
    env = make_env("seq_sales", n_agents=2, size=1)
    boosts = torch.tensor([[0.1, -0.3, 0.4]], dtype=torch.float64)
    text = env.describe(AMA(env, weights=torch.tensor([2.0, 0.5]), boosts=boosts)).markdown()
    row = next(line for line in text.splitlines() if line.startswith("| []"))
    assert _numbers(row) == pytest.approx([(0.1 + 0.3) / 2.0, (0.1 - 0.4) / 0.5])


def test_a_one_bidder_static_ama_shows_the_prices_it_charges(gen):
    env = make_env("static_auction", n_agents=1, size=2)
    ama = AMA.known_optimum(env)
    text = env.describe(ama).markdown()
    prices = {}
    for line in text.splitlines():
        m = re.match(r"\| \[(\d), (\d)\] \| (-?\d+\.\d+) \| (-?\d+\.\d+) \|", line)
        if m:
            prices[(int(m[1]), int(m[2]))] = float(m[4])
    assert prices == pytest.approx({(0, 0): 0.0, (0, 1): 2 / 3, (1, 0): 2 / 3, (1, 1): (4 - 2**0.5) / 3}, abs=5e-5)
    out = ama.outcome(env.sample_types(300, gen))  # and they are what the bidder pays
    for k, alloc in enumerate(env.mdp.action_labels):
        paid = out.payments[out.policy[:, 0] == k, 0]
        assert torch.allclose(paid, torch.full_like(paid, prices[alloc]), atol=5e-5)


@pytest.mark.parametrize("name", ["scheduling", "gridworld", "matching"])
def test_every_setting_describes_its_mechanisms(name, tmp_path, gen):
    env = make_env(name)
    ama = AMA(env, boosts=0.3 * torch.randn(env.mdp.shape, generator=gen, dtype=torch.float64))
    md, png = write_description(ama, tmp_path)
    text = md.read_text()
    assert text.startswith(f"# AMA on {env.report_key}") and "|---|" in text and png.stat().st_size > 5000


def test_vcg_in_scheduling_gives_each_task_to_the_cheapest(gen):
    env = make_env("scheduling", n_agents=2, size=3)
    text = env.describe(AMA.vcg(env)).markdown()
    rows = [line for line in text.splitlines() if re.match(r"\| \d \|", line)]
    for row in rows:  # the AMA is VCG: its shares equal VCG's, the bracketed figures
        cells = re.findall(r"(\d\.\d\d) \((\d\.\d\d)\)", row)
        assert cells and all(a == b for a, b in cells)


def test_markdown_table():
    assert markdown_table(["a", "b"], [(1, 0.5), ("x", -0.0)]) == "| a | b |\n|---|---|\n| 1 | 0.5000 |\n| x | 0.0000 |"
