"""dmd_torch: automated design of affine maximizer mechanisms in dynamic settings.

Implements Curry, Thoma, Chakrabarti, McAleer, Kroer, Sandholm, He & Seuken, *Automated Design of
Affine Maximizer Mechanisms in Dynamic Settings* (AAAI-24).
"""

from dmd_torch.envs import Setting, make_env
from dmd_torch.evaluation import AuditResult, EvaluationResult, evaluate, ic_audit, known_optimum_mechanism
from dmd_torch.exact import ExactSolution, solve_exact, solve_lp_highs
from dmd_torch.mdp import TabularMDP
from dmd_torch.mechanism import AMA, Outcome
from dmd_torch.regularized import regularized_occupancy
from dmd_torch.storage import load_mechanism, save_mechanism

__all__ = [
    "TabularMDP",
    "ExactSolution",
    "solve_exact",
    "solve_lp_highs",
    "Setting",
    "make_env",
    "AMA",
    "Outcome",
    "regularized_occupancy",
    "EvaluationResult",
    "AuditResult",
    "evaluate",
    "ic_audit",
    "known_optimum_mechanism",
    "save_mechanism",
    "load_mechanism",
]
