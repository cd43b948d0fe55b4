"""Saving and loading mechanisms (written whole: :mod:`dmd_torch.files`).

``mechanism.json`` is human-readable: ``env`` (the setting's config block: ``_target_`` and its
constructor arguments, :meth:`~dmd_torch.envs.Setting.config`), ``weights``, ``boosts[S][A]``,
``states`` (labels: histories as lists of actions, gridworld cells as ``[x, y]``) and ``actions``.
Loading maps rows and columns by label, so a file listing states or actions in another order loads
correctly. ``mechanism.pt`` is the module's ``state_dict`` (its extra state names the setting).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from dmd_torch.checks import all_finite
from dmd_torch.envs import Setting, setting_from_config
from dmd_torch.files import atomic_write, write_json
from dmd_torch.mechanism import AMA

__all__ = ["save_mechanism", "load_mechanism", "mechanism_to_dict", "mechanism_from_dict"]


def _label_key(label: Any) -> Any:
    return tuple(_label_key(x) for x in label) if isinstance(label, (list, tuple)) else label


def mechanism_to_dict(ama: AMA) -> dict[str, Any]:
    """The ``mechanism.json`` content of an AMA."""
    extra = ama.get_extra_state()
    return {
        "env": extra["env"],
        "weights": ama.weights.detach().cpu().tolist(),
        "boosts": ama.boosts.detach().cpu().tolist(),
        "states": extra["states"],
        "actions": extra["actions"],
    }


def _check_numbers(name: str, values: Any) -> torch.Tensor:
    try:
        t = torch.tensor(values, dtype=torch.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"mechanism {name} must be numbers: {err}") from None
    if not all_finite(t):
        raise ValueError(f"mechanism {name} contain NaN or inf")
    return t


def mechanism_from_dict(data: dict[str, Any], setting: Setting | None = None) -> AMA:
    """Builds an AMA from ``mechanism.json`` content, mapping states and actions by label.

    Args:
        data: The parsed JSON.
        setting: The setting; default rebuilds it from ``data["env"]`` (:func:`~dmd_torch.envs.setting_from_config`).

    Raises:
        ValueError: On missing keys, non-positive or non-finite weights, or boosts whose shape or
            labels do not match the setting's MDP.
    """
    if not isinstance(data, dict):
        raise ValueError(f"a mechanism file must hold a JSON object with env, weights, boosts, states and actions, "
                         f"got {type(data).__name__}")
    missing = [k for k in ("env", "weights", "boosts", "states", "actions") if k not in data]
    if missing:
        raise ValueError(f"mechanism file lacks {', '.join(missing)}")
    if setting is None:
        setting = setting_from_config(data["env"])
    mdp = setting.mdp
    S, A = mdp.shape
    w = _check_numbers("weights", data["weights"])
    if w.shape != (setting.n_agents,):
        raise ValueError(f"mechanism weights must be a list of n_agents = {setting.n_agents} numbers, got shape {tuple(w.shape)}")
    if (w <= 0).any():
        raise ValueError(f"mechanism weights must be > 0, got {w.tolist()}")
    b = _check_numbers("boosts", data["boosts"])
    states, actions = data["states"], data["actions"]
    if not isinstance(states, list) or not isinstance(actions, list):
        raise ValueError("mechanism states and actions must be lists of labels")
    if b.shape != (len(states), len(actions)) or b.shape != (S, A):
        raise ValueError(
            f"mechanism boosts must be [states][actions] = [{S}][{A}] for this setting, got {list(b.shape)} "
            f"with {len(states)} state and {len(actions)} action labels"
        )
    s_index = {_label_key(x): k for k, x in enumerate(mdp.state_labels)}
    a_index = {_label_key(x): k for k, x in enumerate(mdp.action_labels)}
    for kind, labels, index in (("state", states, s_index), ("action", actions, a_index)):
        keys = [_label_key(x) for x in labels]
        unknown = [x for x, k in zip(labels, keys) if k not in index]
        if unknown:
            raise ValueError(f"mechanism file has unknown {kind} label(s) {unknown[:5]} for {setting.name}")
        repeated = [x for j, (x, k) in enumerate(zip(labels, keys)) if k in keys[:j]]
        if repeated:
            raise ValueError(f"mechanism file repeats {kind} label(s) {repeated[:5]}; each must appear once")
    rows = torch.tensor([s_index[_label_key(x)] for x in states])
    cols = torch.tensor([a_index[_label_key(x)] for x in actions])
    boosts = torch.empty(S, A, dtype=torch.float64)
    boosts[rows[:, None], cols[None, :]] = b
    return AMA(setting, weights=w, boosts=boosts)


def save_mechanism(ama: AMA, directory: str | os.PathLike) -> tuple[Path, Path]:
    """Writes ``mechanism.json`` and ``mechanism.pt`` into ``directory`` (atomically).

    Returns:
        The paths of the two files.
    """
    directory = Path(directory)
    json_path, pt_path = directory / "mechanism.json", directory / "mechanism.pt"
    write_json(json_path, mechanism_to_dict(ama))
    with atomic_write(pt_path) as tmp:
        torch.save(ama.state_dict(), tmp)
    return json_path, pt_path


def _from_state_dict(path: Path, state: Any, setting: Setting | None) -> AMA:
    """The AMA of a loaded ``mechanism.pt``; one-line errors where it is not one."""
    keys = ("log_weights", "boosts", "_extra_state")
    if not isinstance(state, dict) or not all(k in state for k in keys):
        raise ValueError(f"{path} is not a mechanism state dict: it must map {', '.join(keys)}, "
                         f"got a {type(state).__name__}")
    extra = state["_extra_state"]
    if setting is None:
        if not isinstance(extra, dict) or "env" not in extra:
            raise ValueError(f"{path} does not name its setting; pass setting=")
        setting = setting_from_config(extra["env"])
    ama = AMA(setting)
    for name in ("log_weights", "boosts"):
        value, want = state[name], getattr(ama, name)
        if not isinstance(value, torch.Tensor) or value.shape != want.shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{path}: {name} must be a tensor of shape {tuple(want.shape)}, got {shape}")
        if not value.is_floating_point() or not all_finite(value):
            raise ValueError(f"{path} holds NaN, inf or non-numeric {name}")
    ama.load_state_dict(state)
    return ama


def load_mechanism(path: str | os.PathLike, setting: Setting | None = None) -> AMA:
    """Loads a mechanism from ``mechanism.json`` or ``mechanism.pt`` (or a directory holding one).

    Args:
        path: A file, or a run directory containing ``mechanism.json``.
        setting: The setting (default: rebuilt from the file's ``env`` block).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "mechanism.json"
    if not path.exists():
        raise FileNotFoundError(f"no mechanism file at {path}")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except ValueError as err:  # not JSON, or not text
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        return mechanism_from_dict(data, setting)
    if path.suffix == ".pt":
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated, foreign, or a pickle with code in it (never executed)
            why = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
            raise ValueError(f"{path} is not a mechanism state dict saved by save_mechanism ({why})") from None
        return _from_state_dict(path, state, setting)
    raise ValueError(f"unknown mechanism file type {path.suffix!r}; allowed: .json, .pt")
