"""The one schema of a result file: :class:`RunResult` (``results.json``, ``evaluation.json``).

A training run (:mod:`dmd_torch.app`) writes ``results.json``, ``scripts/evaluate.py`` writes
``evaluation.json``, and the report (:mod:`dmd_torch.report`) reads either: all three use this
dataclass. A result holds the setting (its report key, sizes and config block), the evaluation with
the paper's protocol (:class:`~dmd_torch.evaluation.EvaluationResult`), and where there was one,
the training (:class:`Training`) and the incentive audit (:class:`~dmd_torch.evaluation.AuditResult`).
Files are written whole (write, then rename); :func:`is_complete` tells whether a run directory holds
a finished run of a given configuration, so a rerun sweep resumes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmd_torch.envs.base import Setting
from dmd_torch.evaluation import AuditResult, EvaluationResult
from dmd_torch.files import write_json

__all__ = ["Training", "RunResult", "run_fingerprint", "read_result", "write_result", "is_complete", "RESULTS_FILE"]

#: The file a training run leaves in its directory.
RESULTS_FILE = "results.json"


@dataclass
class Training:
    """How a mechanism was trained.

    Attributes:
        method: The method's name (``grid``, ``zeroth_order``, ``reg_lp``).
        variant: The run's label (the method's name, or a named configuration such as ``reg_lp_paper``).
        config: The method's whole configuration.
        seed: The training seed.
        heldout_profiles: Size of the held-out sample used for model selection.
        heldout: Exact mean objective of the result on it.
        steps: Gradient steps taken.
        grid_candidates: Sobol candidates scored.
        starts: Starting points run.
        best_start: The start that won (``-1``: VCG, which no trained point beat).
        runtime_seconds: Wall time of the whole run.
        device: Where it ran.
    """

    method: str
    variant: str
    config: dict[str, Any]
    seed: int
    heldout_profiles: int
    heldout: float
    steps: int
    grid_candidates: int
    starts: int
    best_start: int
    runtime_seconds: float
    device: str = "cpu"


@dataclass
class RunResult:
    """A result file.

    Attributes:
        setting: The setting's report key (``seq_sales_sym``, ..., or a user setting's).
        n_agents: Its number of agents.
        size: Its size parameter.
        env: Its config block (``_target_`` and constructor arguments).
        objective: The objective's name.
        maximize: Whether higher is better.
        evaluation: The evaluation (paper protocol, VCG and the known optimum on the same profiles).
        training: The training, for a training run.
        audit: The incentive audit, where one was run.
        mechanism: The evaluated mechanism file, for an evaluation of a saved mechanism.
        source: Where the result was read from (not written).
    """

    setting: str
    n_agents: int
    size: int
    env: dict[str, Any]
    objective: str
    maximize: bool
    evaluation: EvaluationResult
    training: Training | None = None
    audit: AuditResult | None = None
    mechanism: str | None = None
    source: Path | None = field(default=None, compare=False)

    @classmethod
    def of(
        cls,
        setting: Setting,
        evaluation: EvaluationResult,
        training: Training | None = None,
        audit: AuditResult | None = None,
        mechanism: str | None = None,
    ) -> RunResult:
        """The result of an evaluation on ``setting`` (its report key, sizes, config and objective)."""
        objective = setting.objective
        return cls(setting.report_key, setting.n_agents, setting.size, setting.config(), objective.name,
                   objective.maximize, evaluation, training, audit, mechanism)

    @property
    def label(self) -> str:
        """The report column: the training's variant, or ``evaluated`` for an evaluated mechanism."""
        return self.training.variant if self.training is not None else "evaluated"

    def fingerprint(self) -> dict[str, Any] | None:
        """What must match for this finished training run to stand for a new one (:func:`is_complete`)."""
        tr = self.training
        if tr is None:
            return None
        return run_fingerprint(self.env, tr.config, tr.seed, tr.heldout_profiles, self.evaluation.profiles,
                               self.evaluation.seed)

    def to_dict(self) -> dict[str, Any]:
        """The JSON content."""
        data = dataclasses.asdict(self)
        data.pop("source")
        return data

    @classmethod
    def from_dict(cls, data: Any, source: Path | None = None) -> RunResult:
        """Parses and checks JSON content; a one-line ``ValueError`` names what is missing or malformed."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        try:
            kwargs = _fields(cls, data, ("source",))
            kwargs["evaluation"] = EvaluationResult(**_fields(EvaluationResult, kwargs["evaluation"]))
            if kwargs.get("training") is not None:
                kwargs["training"] = Training(**_fields(Training, kwargs["training"]))
            if kwargs.get("audit") is not None:
                kwargs["audit"] = AuditResult(**_fields(AuditResult, kwargs["audit"]))
        except (TypeError, KeyError) as err:
            raise ValueError(f"malformed result: {err}") from None
        result = cls(**kwargs, source=source)
        ev = result.evaluation
        bad = [k for k in ("mean", "stderr", "vcg_mean", "vcg_stderr") if not _finite(getattr(ev, k))]
        if result.training is not None and not _finite(result.training.runtime_seconds):
            bad.append("training.runtime_seconds")
        if bad:
            raise ValueError(f"not finite numbers: {', '.join(bad)}")
        return result


def run_fingerprint(
    env: dict[str, Any], method: dict[str, Any], seed: int, heldout_profiles: int, eval_profiles: int, eval_seed: int
) -> dict[str, Any]:
    """The configuration of a training run that decides its result, as it reads back from JSON."""
    out = {"env": env, "method": method, "seed": seed, "heldout_profiles": heldout_profiles,
           "eval_profiles": eval_profiles, "eval_seed": eval_seed}
    return json.loads(json.dumps(out))


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _fields(cls: type, data: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The entries of ``data`` for the dataclass ``cls``; raises on a missing required one."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__} must be an object, got {type(data).__name__}")
    names = [f for f in dataclasses.fields(cls) if f.name not in skip]
    required = [f.name for f in names if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in data]
    if missing:
        raise KeyError(f"{cls.__name__} lacks {', '.join(missing)}")
    return {f.name: data[f.name] for f in names if f.name in data}


def write_result(path: str | os.PathLike, result: RunResult) -> None:
    """Writes ``result`` as JSON, atomically."""
    write_json(path, result.to_dict())


def read_result(path: str | os.PathLike) -> RunResult:
    """Reads a result file (or the ``results.json`` of a run directory).

    Raises:
        ValueError: If it does not parse or lacks a required value (the message names the file).
        OSError: If it cannot be read.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    try:
        return RunResult.from_dict(data, source=path)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def is_complete(run_dir: str | os.PathLike, fingerprint: dict[str, Any] | None = None) -> bool:
    """Whether ``run_dir`` holds a finished run: a readable ``results.json`` of a training run whose
    :meth:`RunResult.fingerprint` equals ``fingerprint`` (when given). Never raises on a bad file."""
    try:
        result = read_result(Path(run_dir) / RESULTS_FILE if Path(run_dir).is_dir() else run_dir)
    except (OSError, ValueError):
        return False
    if result.training is None:
        return False
    return fingerprint is None or result.fingerprint() == json.loads(json.dumps(fingerprint))
