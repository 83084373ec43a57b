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

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlfw.build import build_policy_agent
from rlfw.envs.recording import record_episodes
from rlfw.errors import ConfigError
from rlfw.training.checkpoint import load_latest

__all__ = ["EvaluateConfig", "build_policy", "evaluate", "main", "record_episodes"]


@dataclass
class EvaluateConfig:
    """Keys of ``python -m rlfw.evaluate``."""

    run_dir: str = MISSING
    episodes: int = 10
    video: bool = False
    video_episodes: int = 1  # how many of the episodes to render (with video=true)
    seed: int = 10_000  # episode k is reset with seed + k
    checkpoint: str = "last.pt"  # a file in <run_dir>/checkpoints/


def build_policy(cfg: DictConfig, state: dict[str, Any] | None = None) -> tuple[Any, Any, Any]:
    """(agent, env family, EnvInfo) for ``cfg``, with the agent's state loaded if given."""
    agent, env = build_policy_agent(cfg, state)
    return agent, env.family, env.info


def evaluate(ecfg: Any) -> dict[str, Any]:
    """Evaluate a run (see the module docstring); returns the summary written to evaluation.json.

    Raises:
        ConfigError: the run directory or checkpoint is missing.
    """

    run = Path(ecfg.run_dir).expanduser()
    ckpt = run / "checkpoints" / ecfg.checkpoint
    try:
        state, _ = load_latest(ckpt.parent, ckpt.name)
    except FileNotFoundError:
        raise ConfigError(f"run_dir={ecfg.run_dir}: no checkpoint at {ckpt}") from None
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
    if "--help" in args or "-h" in args:  # usage, the module docstring's body and the keys
        defaults = {f.name: f.default for f in dataclasses.fields(EvaluateConfig)}
        keys = ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in defaults.items()
                         if k != "run_dir")  # fmt: skip
        body = (__doc__ or "").split("\n\n", 1)[-1].strip()
        print(f"usage: python -m rlfw.evaluate run_dir=<run> [key=value ...]\n\n{body}\n\nkeys (defaults): {keys}")
        return
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
