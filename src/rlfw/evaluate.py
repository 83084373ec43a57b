"""``python -m rlfw.evaluate run_dir=<run> episodes=N [checkpoint=best|last] [video=true]``:
evaluate a trained policy.

Loads ``<run>/checkpoints/last.pt`` (``checkpoint=best``: ``best.pt``, the evaluation with the
best confirmed figure, the checkpoint a run delivers) with the run's config, runs N deterministic episodes, prints success
rate and return with their 95% intervals (Wilson for the success rate, t for the return) and
writes ``<run>/evaluation.json`` (the fields a run's own final evaluation writes there,
:func:`rlfw.core.stats.episode_summary`; a link planted at that path is replaced, never
followed). With ``video=true`` the
first ``video_episodes`` episodes are rendered to ``<run>/videos/eval_<k>.mp4`` (one frame per
observation: an episode of T steps has T + 1 frames).

``python -m rlfw.evaluate pretrained=<env_id>`` evaluates one of the agents shipped with rlfw
(:mod:`rlfw.pretrained`) the same way, writing into ``out`` (default
``pretrained/<env_id>/``): ``evaluation.json`` and the videos.

Bad input (a missing run directory or checkpoint, neither or both of ``run_dir`` and
``pretrained``, a file that is not a policy checkpoint,
``episodes=0``, a negative seed, a run directory that cannot be written) is one line
``rlfw.evaluate: error: ...`` and exit status 2, before any simulator starts.

Headless rendering: MuJoCo envs (Fetch, Hopper) render on the CPU with OSMesa
(``MUJOCO_GL=osmesa``, set by rlfw when the library is present; Debian/Ubuntu:
``apt-get install libosmesa6``); panda-gym renders with PyBullet's CPU renderer.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from rlfw.build import build_policy_agent
from rlfw.config.preflight import parse_key_values
from rlfw.core.runfiles import plain_config
from rlfw.core.stats import episode_summary
from rlfw.envs import check_trusted
from rlfw.envs.recording import record_episodes
from rlfw.errors import ConfigError, fail
from rlfw.training.checkpoint import check_policy_state, checkpoint_file, load_latest
from rlfw.training.outputs import write_json

__all__ = ["USAGE", "EvaluateConfig", "build_policy", "check_keys", "evaluate", "evaluate_pretrained", "main", "record_episodes"]


@dataclass
class EvaluateConfig:
    """Keys of ``python -m rlfw.evaluate``."""

    run_dir: str | None = None  # the run to evaluate (or pretrained=)
    # an agent shipped with rlfw (rlfw.pretrained), by env id, instead of a run
    pretrained: str | None = None
    out: str | None = None  # pretrained only: where evaluation.json and videos go (pretrained/<env_id>)
    episodes: int = 10  # >= 1
    video: bool = False
    video_episodes: int = 1  # how many of the episodes to render (with video=true), >= 0
    seed: int = 10_000  # episode k is reset with seed + k (>= 0, Gymnasium's reset seeds)
    # last (last.pt, previous.pt if it is damaged), best (best.pt: the best eval.metric), or a
    # file name in <run_dir>/checkpoints/
    checkpoint: str = "last"
    # the modules the run's config imports to make its env (env.imports, a module:Env-v0 id)
    # that you trust: rlfw imports none that a run directory names unless they are named here
    imports: list[str] = field(default_factory=list)


USAGE = """usage: python -m rlfw.evaluate run_dir=<run> [key=value ...]
       python -m rlfw.evaluate pretrained=<env_id> [key=value ...]

Evaluate a trained run's policy, or an agent shipped with rlfw: deterministic episodes, success
rate and return printed and written to <run_dir>/evaluation.json.

keys:
  run_dir=<dir>        the run directory
  pretrained=<env_id>  instead of run_dir: a shipped agent (FetchPush-v4, ...)
  out=<dir>            with pretrained: where evaluation.json and videos go (pretrained/<env_id>)
  checkpoint=last      last (checkpoints/last.pt), best (checkpoints/best.pt), or a file name
                       in <run_dir>/checkpoints/
  episodes=10          episodes to run (>= 1)
  seed=10000           episode k is reset with seed + k (>= 0)
  video=false          render episodes to <run_dir>/videos/eval_<k>.mp4
  video_episodes=1     how many of the episodes to render with video=true (>= 0)
  imports=[]           modules the run's config imports to make its env (env.imports, a
                       module:Env-v0 id) that you trust; none is imported unless named here
"""


def check_keys(ecfg: Any) -> None:
    """The ranges of :class:`EvaluateConfig`'s keys.

    Raises:
        ConfigError: one line naming the key and its allowed values.
    """
    if int(ecfg.episodes) < 1:
        raise ConfigError(f"episodes={ecfg.episodes} must be >= 1")
    if int(ecfg.seed) < 0:
        raise ConfigError(f"seed={ecfg.seed} must be >= 0 (Gymnasium reset seeds are non-negative)")
    if int(ecfg.video_episodes) < 0:
        raise ConfigError(f"video_episodes={ecfg.video_episodes} must be >= 0")


def build_policy(cfg: DictConfig, state: dict[str, Any] | None = None) -> tuple[Any, Any, Any]:
    """(agent, env family, EnvInfo) for ``cfg``, with the agent's state loaded if given."""
    agent, env = build_policy_agent(cfg, state)
    return agent, env.family, env.info


def evaluate(ecfg: Any) -> dict[str, Any]:
    """Evaluate a run (see the module docstring); returns the summary written to evaluation.json.

    Raises:
        ConfigError: a key out of range (:func:`check_keys`), the run directory is missing, a
            file or not writable, the checkpoint is missing, unreadable or not a policy
            checkpoint.
    """
    check_keys(ecfg)
    if (ecfg.run_dir is None) == (ecfg.pretrained is None):
        raise ConfigError("give run_dir=<run> (a trained run) or pretrained=<env_id> (a shipped agent), one of them")
    if ecfg.pretrained is not None:
        return evaluate_pretrained(ecfg)
    run = Path(ecfg.run_dir).expanduser()
    if not run.is_dir():
        what = "is a file, not a run directory" if run.exists() else "does not exist"
        raise ConfigError(f"run_dir={ecfg.run_dir} {what}")
    if not os.access(run, os.W_OK | os.X_OK):
        raise ConfigError(f"run_dir={ecfg.run_dir} is not writable (evaluate writes evaluation.json and videos/ there)")
    videos = run / "videos"
    if ecfg.video and (videos.is_symlink() or (videos.is_dir() and any(p.is_symlink() for p in videos.iterdir()))):
        raise ConfigError(f"run_dir={ecfg.run_dir}: {videos} is or holds a link: rlfw writes videos only inside the run "
                          "directory")  # fmt: skip
    ckpt = checkpoint_file(run, str(ecfg.checkpoint))
    try:
        state, read = load_latest(ckpt.parent, ckpt.name, check=check_policy_state)
    except FileNotFoundError:
        hint = " (written at the first evaluation with a finite eval.metric)" if ckpt.name == "best.pt" else ""
        raise ConfigError(f"run_dir={ecfg.run_dir}: no checkpoint at {ckpt}{hint}") from None
    cfg = plain_config(state["config"], read)  # interpolations resolved before the trust check
    check_trusted(cfg.get("env") or {}, list(ecfg.imports), f"run_dir={ecfg.run_dir}", "imports=[{modules}]")
    agent, _, _ = build_policy(cfg, state["agent"])
    summary = {
        "run_dir": str(run),
        "checkpoint": read.name,
        "checkpoint_epoch": int(state["counters"]["epoch"]),
        **run_and_summarise(cfg, agent, ecfg, run / "videos"),
    }
    write_json(run / "evaluation.json", summary)
    return summary


def run_and_summarise(cfg: DictConfig, agent: Any, ecfg: Any, videos: Path) -> dict[str, Any]:
    """``ecfg.episodes`` deterministic episodes of ``agent`` (``act(obs [N, obs_dim], goal) ->
    [N, A]`` in [-1, 1]) on ``cfg``'s env, the first ``ecfg.video_episodes`` rendered to
    ``videos/eval_<k>.mp4`` with ``ecfg.video``; episode k resets with ``ecfg.seed + k``.

    Returns:
        ``seed``, ``source`` and :func:`rlfw.core.stats.episode_summary`'s fields (episodes,
        return and success with their 95% intervals), ``videos`` and ``video_frames``.

    Raises:
        RuntimeError: rendering fails (:func:`rlfw.envs.recording.record_episodes`).
    """
    n_video = min(ecfg.video_episodes, ecfg.episodes) if ecfg.video else 0
    stats = []
    if n_video:
        stats += record_episodes(cfg, agent, videos / "eval_{k}.mp4", n_video, ecfg.seed, render=True)
    if ecfg.episodes > n_video:
        stats += record_episodes(cfg, agent, "", ecfg.episodes - n_video, ecfg.seed + n_video, render=False)
    return {
        "seed": int(ecfg.seed),
        "source": "rlfw.evaluate",
        **episode_summary(np.array([s["return"] for s in stats]), np.array([s["success"] for s in stats])),
        "videos": [str(videos / f"eval_{k}.mp4") for k in range(n_video)],
        "video_frames": [int(s["frames"]) for s in stats[:n_video]],
    }


def evaluate_pretrained(ecfg: Any) -> dict[str, Any]:
    """:func:`evaluate` for ``pretrained=<env_id>``: the shipped agent on the env of its id's
    option file (``conf/env/<env_id>.yaml``), evaluation.json and videos in ``out``.

    Raises:
        ConfigError: no such agent, an ``out`` that is a file, or a linked ``videos/``.
    """
    from types import SimpleNamespace

    from rlfw.config.preflight import compose_config
    from rlfw.pretrained import load_pretrained

    policy = load_pretrained(str(ecfg.pretrained))
    out = Path(ecfg.out or Path("pretrained") / policy.env_id).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} is a file; give a directory")
    videos = out / "videos"
    if ecfg.video and videos.is_symlink():
        raise ConfigError(f"out={out}: {videos} is a link: rlfw writes videos only inside out")
    out.mkdir(parents=True, exist_ok=True)
    cfg = compose_config([f"env={policy.env_id}"])
    summary = {
        "pretrained": policy.env_id,
        "checkpoint": policy.card["file"],
        "checkpoint_epoch": policy.card.get("epoch"),
        **run_and_summarise(cfg, SimpleNamespace(act=policy.agent_act), ecfg, videos),
    }
    write_json(out / "evaluation.json", summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    """Parse ``key=value`` arguments against :class:`EvaluateConfig`, evaluate, print."""
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(USAGE, end="")
        return
    try:
        ecfg = parse_key_values(EvaluateConfig, args)
        summary = evaluate(ecfg)
    except (ConfigError, RuntimeError) as err:
        raise fail("rlfw.evaluate", err, bad_input=(RuntimeError,)) from None
    sr = summary["success_rate"]
    success = "success rate n/a"
    if sr is not None:
        lo, hi = summary["success_ci"]
        success = f"success rate {sr:.3f} [{lo:.3f}, {hi:.3f}]"
    rlo, rhi = summary["return_ci"]
    print(
        f"{summary['episodes']} episodes ({summary['checkpoint']}"
        + (f" of epoch {summary['checkpoint_epoch']}" if summary["checkpoint_epoch"] is not None else "")
        + f"): {success} | "
        f"return {summary['return_mean']:.3f} [{rlo:.3f}, {rhi:.3f}] (95% intervals: Wilson, t)"
    )
    for v, n in zip(summary["videos"], summary["video_frames"]):
        print(f"video: {v} ({n} frames)")


if __name__ == "__main__":
    main()
