"""dmd_torch: automated design of affine maximizer mechanisms in dynamic settings.

Implements Curry, Thoma, Chakrabarti, McAleer, Kroer, Sandholm, He & Seuken, *Automated Design of
Affine Maximizer Mechanisms in Dynamic Settings* (AAAI-24).
"""

from dmd_torch.envs import Setting, make_env, setting_from_config
from dmd_torch.evaluation import AuditResult, EvaluationResult, evaluate, ic_audit
from dmd_torch.exact import ExactSolution, solve_exact, solve_lp_highs
from dmd_torch.follower import ExactFollower, RegularizedFollower
from dmd_torch.mdp import TabularMDP
from dmd_torch.mechanism import AMA, Outcome
from dmd_torch.objective import LeaderObjective, Loss, Revenue, leader_objective, payments
from dmd_torch.regularized import regularized_occupancy
from dmd_torch.storage import load_mechanism, save_mechanism

__all__ = [
    "TabularMDP",
    "ExactSolution",
    "solve_exact",
    "solve_lp_highs",
    "Setting",
    "make_env",
    "setting_from_config",
    "LeaderObjective",
    "Revenue",
    "Loss",
    "leader_objective",
    "payments",
    "ExactFollower",
    "RegularizedFollower",
    "AMA",
    "Outcome",
    "regularized_occupancy",
    "EvaluationResult",
    "AuditResult",
    "evaluate",
    "ic_audit",
    "save_mechanism",
    "load_mechanism",
]
