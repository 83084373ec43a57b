"""Deterministic episodes of a trained agent on a fresh env, optionally rendered to MP4.

Headless rendering: MuJoCo envs (Fetch, Hopper) render on the CPU with OSMesa
(``MUJOCO_GL=osmesa``, set by rlfw when the library is present; Debian/Ubuntu:
``apt-get install libosmesa6``); panda-gym renders with PyBullet's CPU renderer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig


def _rendering_hint(env_id: str) -> str:
    if env_id.startswith("Panda"):
        return "panda-gym renders with PyBullet's CPU renderer (no extra package needed)"
    return "MuJoCo renders headless with OSMesa: apt-get install libosmesa6 (and MUJOCO_GL=osmesa)"


def record_episodes(
    cfg: DictConfig,
    agent: Any,
    path: str | Path,
    episodes: int = 1,
    seed: int = 0,
    render: bool = True,
) -> list[dict[str, float]]:
    """Run deterministic episodes; with ``render`` write each as an MP4.

    Args:
        cfg: the run's config (env family, id, kwargs).
        agent: an agent (:class:`rlfw.core.Agent`; NoisyNet layers act with their mean weights).
        path: the MP4 path for one episode, or a pattern with ``{k}`` for several.
        episodes: how many episodes.
        seed: episode k resets with ``seed + k``.
        render: write videos (False: statistics only).

    Returns:
        Per episode: ``return``, ``length``, ``success`` (NaN if the env does not report it)
        and ``frames`` (0 without rendering).

    Raises:
        RuntimeError: if rendering fails, with what to install, or the env cannot render
            (no ``render_mode`` argument, no ``rgb_array`` mode).
    """
    from rlfw.envs import FAMILIES, env_imports, env_wrappers, resolve_env_id
    from rlfw.envs.obs import split_obs

    env_id, _ = resolve_env_id(str(cfg.env.id), cfg.env.family, bool(cfg.env.resolve_version), env_imports(cfg))
    family = FAMILIES.get(cfg.env.family).target
    try:
        env = family.make(env_id, cfg.env.max_episode_steps, dict(cfg.env.kwargs), "rgb_array" if render else None,
                          env_wrappers(cfg))
    except TypeError as err:
        if not render:
            raise
        raise RuntimeError(f"{env_id} cannot render: its constructor takes no render_mode ({err}); "
                           "evaluate it without video=true") from None  # fmt: skip
    if render and "rgb_array" not in (env.metadata.get("render_modes") or []):
        env.close()
        raise RuntimeError(f"{env_id} cannot render: its render_modes are {env.metadata.get('render_modes') or []}, "
                           "not rgb_array; evaluate it without video=true")  # fmt: skip
    goal = isinstance(env.observation_space, __import__("gymnasium").spaces.Dict)
    fps = int(env.metadata.get("render_fps") or 25)
    out: list[dict[str, float]] = []
    try:
        for k in range(episodes):
            obs, _ = env.reset(seed=seed + k)
            frames: list[Any] = []
            if render:
                frames.append(_render(env, env_id))
            done, ret, length, success = False, 0.0, 0, float("nan")
            while not done:
                o = split_obs({key: np.asarray(v)[None] for key, v in obs.items()} if goal else np.asarray(obs)[None], goal)
                action = agent.act(o["observation"], o.get("desired_goal"))[0]
                obs, reward, term, trunc, info = env.step(action)
                ret += float(reward)
                length += 1
                done = bool(term or trunc)
                if "is_success" in info:
                    success = float(info["is_success"])
                if render:
                    frames.append(_render(env, env_id))
            if render:
                p = Path(str(path).format(k=k))
                p.parent.mkdir(parents=True, exist_ok=True)
                import imageio.v2 as imageio

                imageio.mimsave(p, frames, fps=fps, macro_block_size=1)
            out.append({"return": ret, "length": length, "success": success, "frames": len(frames)})
    finally:
        env.close()
    return out


def _render(env: Any, env_id: str) -> np.ndarray:
    try:
        frame = env.render()
    except Exception as err:
        raise RuntimeError(f"could not render {env_id}: {err}. {_rendering_hint(env_id)}") from err
    if frame is None:
        raise RuntimeError(f"{env_id} returned no frame. {_rendering_hint(env_id)}")
    return np.asarray(frame)
