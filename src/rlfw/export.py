"""``python -m rlfw.export run_dir=<run> [checkpoint=best|last] format=onnx|torchscript|safetensors [out=<path>]``.

Exports a trained run's deterministic policy as a self-contained file that runs without rlfw:

- ``onnx``: an ONNX graph (``torch.onnx.export``; run it with onnxruntime),
- ``torchscript``: a TorchScript module (``torch.jit.trace``; load it with ``torch.jit.load``),
- ``safetensors``: the weights, with a JSON description under the metadata key ``rlfw_policy``
  that is enough to rebuild the policy (:func:`policy_spec` describes its fields;
  :func:`load_safetensors` rebuilds it in torch).

The exported policy takes the raw observation as the Gymnasium env returns it, as float32
with a leading batch axis: goal envs two inputs ``observation [N, *obs_shape]`` and
``desired_goal [N, *goal_shape]`` (``achieved_goal`` is not used), other envs one input
``observation [N, *obs_shape]``; it returns ``action [N, *act_shape]`` in the env's own
bounds. Inside the graph, in this order (the same arithmetic as :meth:`rlfw.Policy.predict`,
so the two agree within float32 rounding)::

    x = clip((observation - obs_mean) / obs_std, -clip, clip)    # when the run normalises
    g = clip((desired_goal - goal_mean) / goal_std, -clip, clip)  # goal envs
    h = actor layers on concat(x, g)                              # linear, activation, batch renorm
    a = tanh(h)                  # DDPG/TD3: pi(s); SAC/TQC/CrossQ: the mean action tanh(mu(s))
    a = (a - intercept) / gradient   # [-1, 1] -> [low, high], Gymnasium's rescale_box inverse
    action = min(max(a, low), high)

Batch renormalisation (CrossQ with ``actor_batch_norm``) is exported in eval mode
(``weight * (h - running_mean) / sqrt(running_var + eps) + bias``), NoisyNet layers with their
mean weights (the policy evaluation uses). The default output file is
``<run>/export/policy_<checkpoint>.<onnx|ts|safetensors>``; files are written to a temporary
name and renamed, so a reader never sees a half-written export.

Needs the ``export`` extra (onnx, onnxscript, onnxruntime, safetensors):
``pip install -c constraints.txt -e '.[export]'``. Bad input is one line
``rlfw.export: error: ...`` with exit status 2.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import MISSING
from torch import nn

from rlfw.config.preflight import parse_key_values
from rlfw.errors import ConfigError, fail

__all__ = [
    "FORMATS",
    "ExportConfig",
    "ExportedPolicy",
    "export_policy",
    "load_safetensors",
    "main",
    "policy_module",
    "policy_spec",
]

FORMATS = {"onnx": ".onnx", "torchscript": ".ts", "safetensors": ".safetensors"}
SPEC_KEY = "rlfw_policy"  # the safetensors metadata key of the JSON description
SPEC_VERSION = 1

# activation name (rlfw.algos.networks.ACTIVATIONS) -> torch function, with the defaults of the
# nn modules rlfw builds (LeakyReLU slope 0.01, ELU alpha 1, exact GELU)
_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,
    "leaky_relu": lambda x: nn.functional.leaky_relu(x, 0.01),
    "tanh": torch.tanh,
    "elu": lambda x: nn.functional.elu(x, 1.0),
    "gelu": lambda x: nn.functional.gelu(x),
    "silu": nn.functional.silu,
}


@dataclass
class ExportConfig:
    """Keys of ``python -m rlfw.export``."""

    run_dir: str = MISSING
    # last (last.pt, previous.pt if it is damaged), best (best.pt), or a file name in checkpoints/
    checkpoint: str = "last"
    format: str = "onnx"  # onnx, torchscript, safetensors
    out: str | None = None  # the file to write; null: <run_dir>/export/policy_<checkpoint>.<ext>
    # modules the run's config imports to make its env that you trust (rlfw.evaluate's imports)
    imports: list[str] = field(default_factory=list)


USAGE = """usage: python -m rlfw.export run_dir=<run> [key=value ...]

Export a trained run's deterministic policy (observation normalisation and action rescaling
inside) as a file that runs without rlfw.

keys:
  run_dir=<dir>        the run directory (required)
  checkpoint=last      last (checkpoints/last.pt), best (checkpoints/best.pt), or a file name
                       in <run_dir>/checkpoints/
  format=onnx          onnx (onnxruntime), torchscript (torch.jit.load), safetensors (weights +
                       a JSON description in the metadata key rlfw_policy)
  out=<path>           the file to write (default <run_dir>/export/policy_<checkpoint>.<ext>)
  imports=[]           modules the run's config imports to make its env that you trust
"""


# ----------------------------------------------------------------------------------- the spec


def policy_spec(policy: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The description and tensors of ``policy``'s deterministic action, for every format.

    Args:
        policy: an :class:`rlfw.Policy` (``rlfw.load(run_dir)``).

    Returns:
        ``(spec, tensors)``: ``tensors`` maps names to float32 CPU tensors; ``spec`` is plain
        JSON data: ``version``, ``algo``, ``env_id``, ``inputs`` (``["observation",
        "desired_goal"]`` or ``["observation"]``), ``shapes`` (per input and ``action``),
        ``normalizers`` (per input: ``enabled``, ``clip``, ``mean`` and ``std`` tensor names),
        ``layers`` (in order: ``{"type": "linear", "weight": [out, in], "bias": [out]}``,
        ``{"type": "activation", "name": relu|leaky_relu(0.01)|tanh|elu(1)|gelu(exact)|silu}``,
        ``{"type": "batch_renorm", "weight", "bias", "running_mean", "running_var", "eps"}``,
        ``{"type": "tanh"}``; tensor names refer to ``tensors``), and ``action``
        (``gradient``, ``intercept``, ``low``, ``high``: ``a = clip((tanh(h) - intercept) /
        gradient, low, high)``), ``formula`` (the same in words).

    Raises:
        ConfigError: the actor holds a layer type this exporter does not know.
    """
    from rlfw.algos.crossq import BatchRenorm
    from rlfw.algos.networks import ACTIVATIONS
    from rlfw.noise.noisynet import NoisyLinear

    agent = policy.agent
    export_actor = getattr(agent, "export_actor", None)  # the agent says how its actor exports
    if export_actor is None:
        raise ConfigError(f"cannot export a {type(agent).__name__}: it has no export_actor() (rlfw.core.Agent)")
    try:
        seq, keep = export_actor()
    except NotImplementedError as err:
        raise ConfigError(str(err)) from None
    names = {ACTIVATIONS.get(n).target: n for n in ACTIVATIONS.names()}

    tensors: dict[str, torch.Tensor] = {}

    def put(name: str, t: torch.Tensor) -> str:
        tensors[name] = t.detach().to("cpu", torch.float32).contiguous().clone()
        return name

    layers: list[dict[str, Any]] = []
    modules = list(seq)
    last_linear = max(i for i, m in enumerate(modules) if isinstance(m, nn.Linear | NoisyLinear))
    for i, m in enumerate(modules):
        if isinstance(m, nn.Linear | NoisyLinear):
            w: torch.Tensor = m.weight if isinstance(m, nn.Linear) else m.mu_w
            b: torch.Tensor = m.bias if isinstance(m, nn.Linear) else m.mu_b
            if i == last_linear and keep is not None:
                w, b = w[:keep], b[:keep]
            layers.append({"type": "linear", "weight": put(f"actor.{i}.weight", w), "bias": put(f"actor.{i}.bias", b)})
        elif type(m) in names:
            layers.append({"type": "activation", "name": names[type(m)]})
        elif isinstance(m, BatchRenorm):
            layers.append({
                "type": "batch_renorm", "eps": float(m.eps),
                **{k: put(f"actor.{i}.{k}", getattr(m, k).reshape(-1))
                   for k in ("weight", "bias", "running_mean", "running_var")},
            })  # fmt: skip
        else:
            raise ConfigError(f"cannot export the actor layer {type(m).__name__}")
    layers.append({"type": "tanh"})

    goal = bool(policy.info.goal)
    inputs = ["observation", "desired_goal"] if goal else ["observation"]
    norms = {"observation": agent.obs_norm, "desired_goal": agent.goal_norm}
    normalizers = {}
    for name in inputs:
        n = norms[name]
        normalizers[name] = {"enabled": bool(n.enabled), "clip": float(n.clip),
                             "mean": put(f"{name}.mean", n.mean), "std": put(f"{name}.std", n.std)}  # fmt: skip

    space = policy.action_space
    low, high = space.low.astype(np.float32), space.high.astype(np.float32)
    if policy._rescale:  # predict's map: rescale_box(space, -1, 1)'s backward, (a - intercept) / gradient
        grad, icpt = _rescale_affine(space)
    else:
        grad, icpt = np.ones_like(low), np.zeros_like(low)
    action = {k: put(f"action.{k}", torch.from_numpy(np.asarray(v, np.float32)))
              for k, v in (("gradient", grad), ("intercept", icpt), ("low", low), ("high", high))}  # fmt: skip
    shapes = {"observation": list(policy._obs_shape), "action": list(policy._act_shape)}
    if goal:
        shapes["desired_goal"] = list(policy._goal_shape)
    spec = {
        "version": SPEC_VERSION,
        "algo": str(policy.config.algo.name),
        "env_id": str(policy.env_id),
        "inputs": inputs,
        "shapes": shapes,
        "dtype": "float32",
        "normalizers": normalizers,
        "layers": layers,
        "action": action,
        "formula": (
            "inputs flattened after the batch axis; each input x -> clip((x - mean) / std, -clip, clip) "
            "if its normalizer is enabled; h = concat(inputs) through layers (linear: h @ weight.T + bias; "
            "batch_renorm: weight * (h - running_mean) / sqrt(running_var + eps) + bias); "
            "action = min(max((h - intercept) / gradient, low), high)"
        ),
    }
    return spec, tensors


def _rescale_affine(space: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(gradient, intercept)`` of ``gymnasium.wrappers.utils.rescale_box(space, -1, 1)``, as it
    computes them (float32): its backward map ``(a - intercept) / gradient`` takes [-1, 1] to
    ``[low, high]`` (the map :meth:`rlfw.Policy.predict` applies)."""
    from gymnasium.wrappers.utils import rescale_box

    _, forward, _ = rescale_box(space, np.float32(-1.0), np.float32(1.0))
    intercept = np.asarray(forward(np.zeros(space.shape, space.dtype)), np.float32)
    wide = getattr(np, "float128", np.float64)
    diff = np.asarray(space.high, wide) - np.asarray(space.low, wide)
    gradient = np.ones(space.shape, space.dtype)
    gradient[...] = 2.0 / diff
    gradient = gradient.astype(np.float32)
    return gradient, intercept


# --------------------------------------------------------------------------------- the module


class ExportedPolicy(nn.Module):
    """The deterministic policy of a :func:`policy_spec`, as a plain torch module.

    ``forward(observation [N, *obs_shape], desired_goal [N, *goal_shape] (goal envs only)) ->
    action [N, *act_shape]`` (float32, in the env's bounds): the module docstring's formula.
    Holds only buffers (no parameters, no Python state beyond the layer list), so it traces
    to TorchScript and exports to ONNX as it is.

    Args:
        spec: the description (:func:`policy_spec`).
        tensors: its tensors by name.

    Raises:
        ConfigError: the spec's version or a layer type is unknown, or a tensor is missing.
    """

    def __init__(self, spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        if int(spec.get("version", -1)) != SPEC_VERSION:
            raise ConfigError(f"policy description version {spec.get('version')}; this rlfw reads {SPEC_VERSION}")
        self.spec = spec
        self._buffers_by_name: dict[str, str] = {}

        def buf(name: str) -> str:
            if name not in tensors:
                raise ConfigError(f"the policy description names the tensor {name!r}, which the file lacks")
            key = name.replace(".", "_")
            if key not in self._buffers_by_name.values():
                self.register_buffer(key, tensors[name].to(torch.float32).clone())
            self._buffers_by_name[name] = key
            return key

        self.inputs: list[str] = list(spec["inputs"])
        self.norms: list[tuple[str, str, float] | None] = []
        for name in self.inputs:
            n = spec["normalizers"][name]
            self.norms.append((buf(n["mean"]), buf(n["std"]), float(n["clip"])) if n["enabled"] else None)
        self.layers: list[tuple[str, Any]] = []
        for layer in spec["layers"]:
            kind = layer["type"]
            if kind == "linear":
                self.layers.append(("linear", (buf(layer["weight"]), buf(layer["bias"]))))
            elif kind == "activation":
                if layer["name"] not in _ACTIVATIONS:
                    raise ConfigError(f"unknown activation {layer['name']!r} in the policy description")
                self.layers.append(("activation", layer["name"]))
            elif kind == "batch_renorm":
                keys = tuple(buf(layer[k]) for k in ("weight", "bias", "running_mean", "running_var"))
                self.layers.append(("batch_renorm", (*keys, float(layer["eps"]))))
            elif kind == "tanh":
                self.layers.append(("tanh", None))
            else:
                raise ConfigError(f"unknown layer type {kind!r} in the policy description")
        a = spec["action"]
        self.action_keys = tuple(buf(a[k]) for k in ("gradient", "intercept", "low", "high"))

    def _t(self, key: str) -> torch.Tensor:
        return getattr(self, key)  # type: ignore[no-any-return]

    def forward(self, observation: torch.Tensor, desired_goal: torch.Tensor | None = None) -> torch.Tensor:
        xs = [observation] if desired_goal is None else [observation, desired_goal]
        parts = []
        for x, norm in zip(xs, self.norms):
            x = torch.flatten(x, 1)
            if norm is not None:
                mean, std, clip = norm
                x = torch.clamp((x - self._t(mean)) / self._t(std), -clip, clip)
            parts.append(x)
        h = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        for kind, arg in self.layers:
            if kind == "linear":
                h = nn.functional.linear(h, self._t(arg[0]), self._t(arg[1]))
            elif kind == "activation":
                h = _ACTIVATIONS[arg](h)
            elif kind == "batch_renorm":
                w, b, mean, var, eps = arg
                h = self._t(w) * ((h - self._t(mean)) / (self._t(var) + eps).sqrt()) + self._t(b)
            else:
                h = torch.tanh(h)
        gradient, intercept, low, high = (self._t(k) for k in self.action_keys)
        a = (h - intercept) / gradient
        a = torch.minimum(torch.maximum(a, low), high)
        return a.reshape(a.shape[0], *self.spec["shapes"]["action"])


def policy_module(policy: Any) -> ExportedPolicy:
    """:class:`ExportedPolicy` of an :class:`rlfw.Policy` (eval mode, on the CPU).

    Raises:
        ConfigError: the actor cannot be exported (:func:`policy_spec`).
    """
    spec, tensors = policy_spec(policy)
    return ExportedPolicy(spec, tensors).eval()


def load_safetensors(path: str | Path) -> ExportedPolicy:
    """Rebuild the policy of a ``format=safetensors`` export as an :class:`ExportedPolicy`.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: the file has no ``rlfw_policy`` metadata or an unknown description.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if SPEC_KEY not in meta:
        raise ConfigError(f"{path}: no {SPEC_KEY!r} metadata: not an rlfw policy export")
    return ExportedPolicy(json.loads(meta[SPEC_KEY]), load_file(str(path))).eval()


# ---------------------------------------------------------------------------------- exporting


def _example_inputs(spec: dict[str, Any], batch: int = 2) -> tuple[torch.Tensor, ...]:
    return tuple(torch.zeros(batch, *spec["shapes"][name]) for name in spec["inputs"])


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename onto ``path`` (a reader never sees a half-written file). The
    temp file is created fresh first (:func:`rlfw.core.runfiles.create_fresh`: a link planted
    in its place is removed, not followed), and the rename replaces a link planted at ``path``."""
    from rlfw.core.runfiles import create_fresh

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        os.close(create_fresh(tmp))
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _missing(module: str) -> ConfigError:
    return ConfigError(
        f"format needs the package {module!r}, which is not installed: "
        "pip install -c constraints.txt -e '.[export]' (from the rlfw checkout)"
    )


def export_policy(run_dir: str | Path, format: str = "onnx", checkpoint: str = "last",
                  out: str | Path | None = None, imports: list[str] | None = None) -> Path:  # fmt: skip
    """Export a run's deterministic policy (module docstring) and return the written file.

    Args:
        run_dir: the run directory.
        format: ``onnx``, ``torchscript`` or ``safetensors``.
        checkpoint: ``last``, ``best`` or a file name in ``<run_dir>/checkpoints/``
            (:func:`rlfw.load`).
        out: the file to write; None: ``<run_dir>/export/policy_<checkpoint>.<ext>``.
        imports: the modules the run's config imports that you trust (:func:`rlfw.load`).

    Returns:
        The path written.

    Raises:
        ConfigError: one line: an unknown format, a missing export package, a run directory
            or checkpoint that is missing or not a policy checkpoint, ``out`` naming a
            directory, or an actor this exporter does not know.
    """
    from rlfw.api import load

    fmt = str(format)
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r}: choose one of: {', '.join(sorted(FORMATS))}")
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise ConfigError(f"run_dir={run_dir} {'is a file, not a run directory' if run.exists() else 'does not exist'}")
    needs = {"onnx": ["onnx", "onnxscript"], "safetensors": ["safetensors"], "torchscript": []}[fmt]
    import importlib.util

    for name in needs:
        if importlib.util.find_spec(name) is None:
            raise _missing(name)
    try:
        policy = load(run, checkpoint=checkpoint, device="cpu", imports=imports or ())
    except FileNotFoundError as err:
        raise ConfigError(f"run_dir={run_dir}: {err}") from None
    spec, tensors = policy_spec(policy)
    module = ExportedPolicy(spec, tensors).eval()
    stem = Path(str(checkpoint)).stem if str(checkpoint) not in ("best", "last") else str(checkpoint)
    path = Path(out).expanduser() if out else run / "export" / f"policy_{stem}{FORMATS[fmt]}"
    if not out and (run / "export").is_symlink():
        raise ConfigError(f"run_dir={run_dir}: {run / 'export'} is a link: rlfw writes exports only inside the run "
                          "directory (give out=<file> to write elsewhere)")  # fmt: skip
    if path.is_dir():
        raise ConfigError(f"out={out} is a directory; give the file to write")
    example = _example_inputs(spec)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        meta = {SPEC_KEY: json.dumps(spec), "format": "pt"}
        _write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    elif fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(module, example)
        _write_atomic(path, lambda tmp: torch.jit.save(traced, str(tmp)))
    else:
        _write_atomic(path, lambda tmp: _onnx(module, spec, example, tmp))
    return path


def _onnx(module: ExportedPolicy, spec: dict[str, Any], example: tuple[torch.Tensor, ...], path: Path) -> None:
    """``torch.onnx.export`` (the dynamo exporter) with a dynamic batch axis, weights inline."""
    import logging
    import warnings

    batch = torch.export.Dim("batch")
    shapes = tuple({0: batch} for _ in spec["inputs"])
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, example, input_names=list(spec["inputs"]), output_names=["action"],
                dynamic_shapes=shapes, dynamo=True, external_data=False, verbose=False,
            )  # fmt: skip
            assert program is not None
            program.save(str(path), external_data=False)
    finally:
        quiet.setLevel(level)


# --------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    """Parse ``key=value`` arguments against :class:`ExportConfig`, export, print the path."""
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(USAGE, end="")
        return
    try:
        ecfg = parse_key_values(ExportConfig, args)
        path = export_policy(ecfg.run_dir, ecfg.format, ecfg.checkpoint, ecfg.out, imports=list(ecfg.imports))
    except ConfigError as err:
        raise fail("rlfw.export", err) from None
    print(f"exported {ecfg.format}: {path}")


if __name__ == "__main__":
    main()
