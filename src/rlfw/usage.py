"""``python -m rlfw --help``: rlfw's own help text (:func:`help_text`)."""

from __future__ import annotations

GROUPS = ("algo", "buffer", "noise", "env", "logger", "experiment")


def _keys(prefix: str, schema: type) -> str:
    import dataclasses

    return ", ".join(f"{prefix}{f.name}" for f in dataclasses.fields(schema))


def help_text() -> str:
    """rlfw's ``--help``: usage, each config group with its options (the YAML files in
    ``conf/<group>/``), the root keys, sweeps, resume and where Hydra's own help is."""
    import textwrap

    from rlfw.config.paths import group_options
    from rlfw.config.schema import EvalConfig, TrainConfig

    def wrap(text: str, indent: str, hang: int = 2) -> str:
        return textwrap.fill(text, width=100, initial_indent=indent, subsequent_indent=indent + " " * hang,
                             break_on_hyphens=False)  # fmt: skip

    width = max(len(g) for g in GROUPS)
    groups = []
    for group in GROUPS:
        options = [o for o in group_options(group) if not o.endswith("_schema")]
        groups.append(wrap(f"{group:<{width}}  {', '.join(options)}", "  ", width + 2))
    keys = [
        wrap("seed", "  "),
        wrap(_keys("train.", TrainConfig), "  "),
        wrap(_keys("eval.", EvalConfig), "  "),
    ]
    return "\n".join(
        [
            "usage: python -m rlfw [group=option ...] [key=value ...]",
            "       python -m rlfw -m [key=a,b,c ...]          (a sweep: one job per combination)",
            "       python -m rlfw resume=<run_dir> [train.epochs=N ...]",
            "",
            "Train an off-policy agent; the run directory is outputs/<date>/<time>_<pid>-<hex>_<algo>_<buffer>_<noise>_<env>",
            "(hydra.run.dir=<dir> picks another). Default: algo=td3 buffer=her noise=gaussian logger=csv",
            "env=FetchReach-v4.",
            "",
            "Config groups (group=option):",
            *groups,
            "",
            "Each chosen option has its keys (algo.gamma=0.95, buffer.n_step=3, env.id=..., logger.plots=false);",
            "python -m rlfw --cfg job [overrides] prints the composed config with all of them. Root keys:",
            *keys,
            "",
            "Examples:",
            "  python -m rlfw algo=ddpg buffer=her buffer.sampler=prioritized env=FetchPush-v4",
            "  python -m rlfw env=Hopper-v4 algo=td3 buffer=per buffer.n_step=3 noise=noisynet",
            "  python -m rlfw env=gym env.id=Pendulum-v1 train.epochs=5",
            "  python -m rlfw -m algo=ddpg,td3 seed=0,1,2          (6 jobs into multirun/<date>/<time>/)",
            "  python -m rlfw resume=outputs/<run> train.epochs=20   (continue or extend a run)",
            "",
            "Evaluate a run: python -m rlfw.evaluate run_dir=<run_dir> episodes=N [video=true].",
            "Hydra's own help (launchers, sweepers, its flags): python -m rlfw --hydra-help",
        ]
    )
