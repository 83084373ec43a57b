"""Add a trained run to rlfw's pretrained collection (src/rlfw/pretrained/agents/).

    python tools/pretrained.py <run_dir> [--checkpoint best] [--episodes 200] [--seed 777000]

Exports the run's checkpoint (default best.pt, what the run delivers) to
``agents/<env_id>.safetensors``, records the run's command, commit, seed, env steps and
algorithm in ``agents/index.json``, then evaluates the shipped file itself with
``rlfw.evaluate pretrained=<env_id>`` (``--episodes`` episodes from reset seed ``--seed``) and
stores that delivered figure with its 95% intervals in the index. The run should be a preset
run (``python -m rlfw env=<env_id> seed=<s>``) on a seed that chose no setting.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--checkpoint", default="best")
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--seed", type=int, default=777_000)
    p.add_argument("--commit", default=None,
                   help="the commit the run started from, where its versions.json has none (a run "
                        "of an installed wheel, as benchmarks/run.py --only delivered makes in a venv)")
    args = p.parse_args()

    from rlfw.evaluate import EvaluateConfig, evaluate
    from rlfw.pretrained import AGENTS, _index, add_agent
    from rlfw.training.checkpoint import checkpoint_file, safe_load
    from rlfw.training.outputs import write_json

    run = args.run_dir
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    overrides = OmegaConf.load(run / ".hydra" / "overrides.yaml")
    command = "python -m rlfw " + " ".join(o for o in overrides if not str(o).startswith(("hydra.", "logger.progress")))
    versions = json.loads((run / "versions.json").read_text())
    git = versions.get("git") or {}
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    if not (args.commit or git.get("commit")):
        p.error(f"{run}/versions.json has no git commit: give the run's commit with --commit")
    state = safe_load(checkpoint_file(run, args.checkpoint))
    entry = {
        "algo": str(cfg.algo.name),
        "command": command,
        "commit": args.commit or (str(git.get("commit", ""))[:7] + ("+wip" if git.get("dirty") else "")),
        "seed": int(cfg.seed),
        "epoch": int(state["counters"]["epoch"]),
        "env_steps": int(state["counters"]["env_steps"]),
        "run_env_steps": int(rows[-1]["env_steps"]),
    }
    out = add_agent(run, entry, checkpoint=args.checkpoint)
    env_id = out.stem
    ecfg = OmegaConf.structured(EvaluateConfig(pretrained=env_id, episodes=args.episodes, seed=args.seed,
                                               out=str(Path("/tmp") / f"rlfw-pretrained-{env_id}")))  # fmt: skip
    summary = evaluate(ecfg)
    index = _index(AGENTS)
    index[env_id]["delivered"] = {k: summary[k] for k in ("episodes", "seed", "success_rate", "success_ci",
                                                         "return_mean", "return_ci")}  # fmt: skip
    write_json(AGENTS / "index.json", dict(sorted(index.items())))
    print(json.dumps({env_id: index[env_id]}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
