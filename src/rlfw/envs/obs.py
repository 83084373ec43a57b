"""Observations of Gymnasium vector envs as rlfw stores them: flat float32 arrays per key."""

from __future__ import annotations

from typing import Any

import numpy as np


def split_obs(obs: Any, goal: bool) -> dict[str, np.ndarray]:
    """Vector-env observations -> ``{"observation", ["achieved_goal", "desired_goal"]}`` float32 ``[N, dim]``."""
    if goal:
        return {k: np.asarray(obs[k], np.float32).reshape(len(obs[k]), -1) for k in
                ("observation", "achieved_goal", "desired_goal")}  # fmt: skip
    arr = np.asarray(obs, np.float32)
    return {"observation": arr.reshape(len(arr), -1)}


def final_obs(infos: dict[str, Any], nxt: dict[str, np.ndarray], done: np.ndarray) -> dict[str, np.ndarray]:
    """Final observations of finished envs from a same-step-autoreset ``infos`` (others: ``nxt``)."""
    out = {k: v.copy() for k, v in nxt.items()}
    fo = infos.get("final_obs")
    if fo is None:
        return out
    for e in np.flatnonzero(done):
        for k in out:
            v = fo[k][e] if isinstance(fo, dict) else fo[e]
            if isinstance(v, dict):
                v = v[k]
            out[k][e] = np.asarray(v, np.float32).reshape(-1)
    return out


def success_of(infos: dict[str, Any], done: np.ndarray) -> np.ndarray:
    """``is_success`` of the finished envs' last step (NaN where the env does not report it)."""
    fi = infos.get("final_info", {})
    out = np.full(len(done), np.nan)
    if isinstance(fi, dict):
        if "is_success" in fi:
            mask = fi.get("_is_success", np.ones(len(done), bool))
            out = np.where(mask, np.asarray(fi["is_success"], np.float64), np.nan)
    else:  # an object array of per-env info dicts
        for e in np.flatnonzero(done):
            if isinstance(fi[e], dict) and "is_success" in fi[e]:
                out[e] = float(fi[e]["is_success"])
    return out
