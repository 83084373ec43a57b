"""``python -m rlfw.evaluate run_dir=<run> episodes=N [video=true]``: evaluate a trained policy.

Loads ``<run>/checkpoints/last.pt`` (networks and normalisers) with the run's config, runs N
deterministic episodes, prints success rate and return (mean and std) and writes
``<run>/evaluation.json``. With ``video=true`` the first ``video_episodes`` episodes are
rendered to ``<run>/videos/eval_<k>.mp4`` (one frame per observation: an episode of T steps
has T + 1 frames).

Headless rendering: MuJoCo envs (Fetch, Hopper) render on the CPU with OSMesa
(``MUJOCO_GL=osmesa``, set by rlfw when the library is present; Debian/Ubuntu:
``apt-get install libosmesa6``); panda-gym renders with PyBullet's CPU renderer.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlfw.errors import ConfigError


@dataclass
class EvaluateConfig:
    """Keys of ``python -m rlfw.evaluate``."""

    run_dir: str = MISSING
    episodes: int = 10
    video: bool = False
    video_episodes: int = 1  # how many of the episodes to render (with video=true)
    seed: int = 10_000  # episode k is reset with seed + k
    checkpoint: str = "last.pt"  # a file in <run_dir>/checkpoints/


def _rendering_hint(env_id: str) -> str:
    if env_id.startswith("Panda"):
        return "panda-gym renders with PyBullet's CPU renderer (no extra package needed)"
    return "MuJoCo renders headless with OSMesa: apt-get install libosmesa6 (and MUJOCO_GL=osmesa)"


def build_policy(cfg: DictConfig, state: dict[str, Any] | None = None) -> tuple[Any, Any, Any]:
    """(agent, env family, EnvInfo) for ``cfg``, with the agent's state loaded if given."""
    from rlfw.algos import build_agent
    from rlfw.envs import FAMILIES, read_env_info, resolve_env_id
    from rlfw.noise import NOISES

    env_id, _ = resolve_env_id(str(cfg.env.id), cfg.env.family)
    family = FAMILIES.get(cfg.env.family).target
    probe = family.make(env_id, cfg.env.max_episode_steps, dict(cfg.env.kwargs))
    info = read_env_info(cfg.env.family, probe, env_id)
    probe.close()
    noise = NOISES.get(cfg.noise.name).target(cfg.noise, 1, info.act_dim, np.random.default_rng(0))
    agent = build_agent(cfg, info, noise)
    if state is not None:
        agent.load_state_dict(state)
    return agent, family, info


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
        agent: an :class:`rlfw.algos.ActorCritic` (acts with its mean weights).
        path: the MP4 path for one episode, or a pattern with ``{k}`` for several.
        episodes: how many episodes.
        seed: episode k resets with ``seed + k``.
        render: write videos (False: statistics only).

    Returns:
        Per episode: ``return``, ``length``, ``success`` (NaN if the env does not report it)
        and ``frames`` (0 without rendering).

    Raises:
        RuntimeError: if rendering fails, with what to install.
    """
    from rlfw.envs import FAMILIES, resolve_env_id
    from rlfw.runner import split_obs

    env_id, _ = resolve_env_id(str(cfg.env.id), cfg.env.family)
    family = FAMILIES.get(cfg.env.family).target
    env = family.make(env_id, cfg.env.max_episode_steps, dict(cfg.env.kwargs), "rgb_array" if render else None)
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


def evaluate(ecfg: Any) -> dict[str, Any]:
    """Evaluate a run (see the module docstring); returns the summary written to evaluation.json.

    Raises:
        ConfigError: the run directory or checkpoint is missing.
    """
    import torch

    run = Path(ecfg.run_dir).expanduser()
    ckpt = run / "checkpoints" / ecfg.checkpoint
    if not ckpt.exists():
        raise ConfigError(f"run_dir={ecfg.run_dir}: no checkpoint at {ckpt}")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    cfg = OmegaConf.create(state["config"])
    agent, _, _ = build_policy(cfg, state["agent"])
    n_video = min(ecfg.video_episodes, ecfg.episodes) if ecfg.video else 0
    stats = []
    if n_video:
        stats += record_episodes(cfg, agent, run / "videos" / "eval_{k}.mp4", n_video, ecfg.seed, render=True)
    if ecfg.episodes > n_video:
        stats += record_episodes(cfg, agent, "", ecfg.episodes - n_video, ecfg.seed + n_video, render=False)
    rets = np.array([s["return"] for s in stats])
    succ = np.array([s["success"] for s in stats])
    summary = {
        "run_dir": str(run),
        "checkpoint_epoch": int(state["counters"]["epoch"]),
        "episodes": len(stats),
        "return_mean": float(rets.mean()),
        "return_std": float(rets.std()),
        "success_rate": float(np.nanmean(succ)) if np.isfinite(succ).any() else None,
        "success_std": float(np.nanstd(succ)) if np.isfinite(succ).any() else None,
        "videos": [str(run / "videos" / f"eval_{k}.mp4") for k in range(n_video)],
        "video_frames": [int(s["frames"]) for s in stats[:n_video]],
    }
    (run / "evaluation.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    """Parse ``key=value`` arguments against :class:`EvaluateConfig`, evaluate, print."""
    args = sys.argv[1:] if argv is None else argv
    try:
        schema = OmegaConf.structured(EvaluateConfig)
        try:
            ecfg = OmegaConf.merge(schema, OmegaConf.from_dotlist(args))
            ecfg.run_dir  # noqa: B018 - raises if missing
        except OmegaConfBaseException as err:
            from rlfw.config.preflight import translate

            raise ConfigError(translate(err)) from None
        summary = evaluate(ecfg)
    except (ConfigError, RuntimeError) as err:
        print(f"rlfw.evaluate: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    sr = summary["success_rate"]
    success = f"success rate {sr:.3f} +- {summary['success_std']:.3f}" if sr is not None else "success rate n/a"
    print(
        f"{summary['episodes']} episodes (checkpoint of epoch {summary['checkpoint_epoch']}): {success} | "
        f"return {summary['return_mean']:.3f} +- {summary['return_std']:.3f}"
    )
    for v, n in zip(summary["videos"], summary["video_frames"]):
        print(f"video: {v} ({n} frames)")


if __name__ == "__main__":
    main()
