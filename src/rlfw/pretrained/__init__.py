"""Pretrained agents shipped with rlfw (rl-zoo's collection of trained agents).

Each agent is the deterministic policy of one preset run, exported to safetensors
(:func:`rlfw.export.policy_spec`: weights plus a JSON description, no code; read with
``safetensors``, never unpickled), in ``rlfw/pretrained/agents/<env_id>.safetensors``, and one
entry of ``agents/index.json``: the algorithm, the command and commit that trained it, the
training seed and env steps, and its delivered figure (``python -m rlfw.evaluate
pretrained=<env_id> episodes=200 seed=777000``: success rate and return with 95% intervals).

Use::

    policy = rlfw.load_pretrained("FetchPush-v4")
    action, _ = policy.predict(obs)          # Stable-Baselines3's signature

    python -m rlfw.evaluate pretrained=FetchPush-v4 episodes=100 video=true

:func:`add_agent` adds (or replaces) an agent from a run directory; ``tools/pretrained.py``
drives it for the collection.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rlfw.errors import ConfigError

AGENTS = Path(__file__).with_name("agents")
INDEX = "index.json"

__all__ = ["AGENTS", "PretrainedPolicy", "add_agent", "available", "card", "load_pretrained"]


def _index(root: Path) -> dict[str, Any]:
    from rlfw.core.runfiles import MAX_META_BYTES, load_json, read_text

    path = root / INDEX
    if not path.exists():
        return {}
    data = load_json(read_text(path, MAX_META_BYTES), path)
    return data if isinstance(data, dict) else {}


def available(root: str | Path | None = None) -> list[str]:
    """The env ids of the shipped agents (or of the collection at ``root``), sorted."""
    return sorted(_index(Path(root) if root else AGENTS))


def card(env_id: str, root: str | Path | None = None) -> dict[str, Any]:
    """The index entry of ``env_id``'s agent: ``file``, ``algo``, ``command``, ``commit``,
    ``seed``, ``env_steps`` and ``delivered`` (``episodes``, ``seed``, ``success_rate``,
    ``success_ci``, ``return_mean``, ``return_ci``).

    Raises:
        ConfigError: no agent for ``env_id`` (the line names the ones there are).
    """
    index = _index(Path(root) if root else AGENTS)
    if env_id not in index:
        have = ", ".join(sorted(index)) or "none"
        raise ConfigError(f"pretrained={env_id}: no pretrained agent for it; the collection has: {have}")
    entry = dict(index[env_id])
    entry["env_id"] = env_id
    return entry


class PretrainedPolicy:
    """A shipped agent's deterministic policy: :class:`rlfw.export.ExportedPolicy` with
    Stable-Baselines3's ``predict``.

    Attributes:
        env_id: the Gymnasium id it was trained on.
        card: its index entry (:func:`card`).
        module: the torch module, ``(observation [N, obs_dim], desired_goal [N, goal_dim]) ->
            action [N, act_dim]`` in the env's own bounds (goal envs; others one input).
        goal: whether it takes goal dicts.
    """

    def __init__(self, module: Any, entry: dict[str, Any]) -> None:
        self.module, self.card, self.env_id = module, entry, str(entry["env_id"])
        self.goal = list(module.spec["inputs"]) == ["observation", "desired_goal"]
        # the inverse of the graph's last map, a = (tanh(h) - intercept) / gradient, for envs
        # that rlfw rescales to [-1, 1] (record_episodes acts in that space)
        gradient, intercept = (getattr(module, key) for key in module.action_keys[:2])
        self._gradient = gradient.numpy().astype(np.float64)
        self._intercept = intercept.numpy().astype(np.float64)

    def act(self, obs: Any) -> np.ndarray:
        """Actions in the env's own bounds for one observation (``(act_dim,)``) or a batch
        (``(N, act_dim)``), as the Gymnasium env returns them (a goal dict, or an array).

        Raises:
            TypeError: a goal env's observation that is not a dict, or a dict for another env.
        """
        import torch

        if self.goal:
            if not isinstance(obs, Mapping):
                raise TypeError(f"{self.env_id} is a goal env: the policy takes its dict observation")
            o, g = np.asarray(obs["observation"], np.float32), np.asarray(obs["desired_goal"], np.float32)
            single = o.ndim == 1
            inputs: tuple[np.ndarray, ...] = (o[None], g[None]) if single else (o, g)
        else:
            if isinstance(obs, Mapping):
                raise TypeError(f"{self.env_id} has array observations; the policy got a dict")
            o = np.asarray(obs, np.float32)
            single = o.ndim == 1
            inputs = (o[None],) if single else (o,)
        with torch.no_grad():
            a = self.module(*map(torch.from_numpy, inputs)).numpy()
        return a[0] if single else a

    def predict(
        self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = True
    ) -> tuple[np.ndarray, Any]:
        """Stable-Baselines3's ``predict``: ``(actions, state)``, ``state`` as given (the
        policy is not recurrent); only the deterministic policy is shipped.

        Raises:
            NotImplementedError: ``deterministic=False``.
        """
        if not deterministic:
            raise NotImplementedError("a pretrained agent ships its deterministic policy only")
        return self.act(observation), state

    def agent_act(self, obs: np.ndarray, goal: np.ndarray | None = None, explore: bool = False) -> np.ndarray:
        """:meth:`rlfw.core.Agent.act`'s form (``[N, obs_dim]``, ``[N, goal_dim]`` -> ``[N, A]``
        in [-1, 1]), so rlfw's evaluation runs it like a trained agent."""
        a = self.act({"observation": obs, "desired_goal": goal} if self.goal else obs)
        return (a * self._gradient + self._intercept).astype(np.float32)


def load_pretrained(env_id: str, root: str | Path | None = None) -> PretrainedPolicy:
    """The shipped agent for ``env_id`` (see the module docstring).

    Raises:
        ConfigError: no agent for ``env_id``, or its file is missing or not an rlfw policy
            export.
    """
    from rlfw.export import load_safetensors

    base = Path(root) if root else AGENTS
    entry = card(env_id, base)
    path = base / str(entry["file"])
    if Path(entry["file"]).name != entry["file"] or not path.is_file():
        raise ConfigError(f"pretrained={env_id}: its file {path} is missing")
    return PretrainedPolicy(load_safetensors(path), entry)


def add_agent(run_dir: str | Path, entry: dict[str, Any], root: str | Path | None = None,
              checkpoint: str = "best", imports: list[str] | None = None) -> Path:  # fmt: skip
    """Export ``run_dir``'s ``checkpoint`` to ``<root>/<env_id>.safetensors`` and record
    ``entry`` (``algo``, ``command``, ``commit``, ``seed``, ``env_steps``, ``delivered``...)
    under the env id in ``<root>/index.json`` (both written atomically).

    Returns:
        The safetensors file.

    Raises:
        ConfigError: as :func:`rlfw.export.export_policy`.
    """
    from rlfw.api import load
    from rlfw.export import export_policy
    from rlfw.training.outputs import write_json

    base = Path(root) if root else AGENTS
    base.mkdir(parents=True, exist_ok=True)
    env_id = load(run_dir, checkpoint=checkpoint, imports=imports or ()).env_id
    out = export_policy(run_dir, "safetensors", checkpoint=checkpoint, out=base / f"{env_id}.safetensors",
                        imports=imports)  # fmt: skip
    index = _index(base)
    index[env_id] = {**entry, "file": out.name}
    write_json(base / INDEX, dict(sorted(index.items())))
    os.utime(base)
    return out
