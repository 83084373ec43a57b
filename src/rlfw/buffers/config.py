"""The replay schema: the buffer's own keys plus the keys each part declares.

Each part owns its keys: a relabeler's schema subclasses :class:`~rlfw.buffers.relabel.
RelabelConfig` (HER's ``strategy``, ``replay_k``), a sampler's :class:`~rlfw.buffers.samplers.
SamplerConfig` (PER's ``alpha``, ``beta0``, ``beta_final_step``, ``priority_eps``; EBP's
``energy_clip``, ``energy_dt``, ``energy_eps``), n-step's is
:class:`~rlfw.buffers.returns.NStepConfig`. :class:`BufferConfig` is the built-in parts'
schemas together; :func:`buffer_schema` adds the keys of parts registered later (another
module's sampler), and :func:`rlfw.buffers.store_schemas` stores the result as every buffer option's
``buffer/<name>_schema`` before a config is composed.
"""

# No ``from __future__ import annotations`` here: OmegaConf reads these annotations at run time
# (``X | None`` and ``list[int]`` need Python >= 3.10, as pyproject says).
import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from rlfw.buffers.keys import PARTS, part_schemas
from rlfw.buffers.relabel import HerRelabelConfig
from rlfw.buffers.returns import NStepConfig
from rlfw.buffers.samplers import EnergySamplerConfig, PrioritizedSamplerConfig
from rlfw.core.checks import human_bytes, in_range, memory_bytes, require
from rlfw.registry import registry


@dataclass
class StorageConfig:
    """The buffer's own keys (the episode storage's)."""

    name: str = "uniform"  # the buffer option's name, for run names and logs only
    capacity: int = 1_000_000  # transitions kept (over all parallel envs)


# Field order (that of the saved config): name, capacity, relabel, strategy, replay_k, sampler,
# alpha, beta0, beta_final_step, priority_eps, energy_clip, energy_dt, energy_eps, n_step
# (dataclass fields follow the reverse MRO).
@dataclass
class BufferConfig(NStepConfig, EnergySamplerConfig, PrioritizedSamplerConfig, HerRelabelConfig, StorageConfig):
    """One replay schema with orthogonal parts; the options in conf/buffer set some of them.

    ``relabel`` (none, her) x ``sampler`` (uniform, prioritized, energy) x ``n_step`` (>= 1); each part's
    keys come from its own schema (the bases).
    """

    @staticmethod
    def validate(node: Any) -> None:
        """The part names, then each registered part's keys (every option's, chosen or not, as
        all are in the node), then n-step and the memory (one :class:`rlfw.errors.ConfigError`
        line)."""
        registry("buffer.relabel").check(node.relabel)
        registry("buffer.sampler").check(node.sampler)
        in_range(node, "capacity", 1, prefix="buffer.")
        for kind in PARTS:
            for schema in part_schemas(kind):
                check = getattr(schema, "validate", None)
                if check is not None:
                    check(node)
        NStepConfig.validate(node)
        check_memory(node)


_EXTENDED: dict[tuple[Any, ...], type] = {}


def _declarer(schema: type, key: str) -> type:
    """The class in ``schema``'s MRO that declares the field ``key`` (a subclass that only
    inherits a key does not declare it again)."""
    for cls in reversed(schema.__mro__):
        if key in vars(cls).get("__annotations__", {}):
            return cls
    return schema


def buffer_schema(base: type = BufferConfig) -> type:
    """``base`` with the keys of every registered relabeler and sampler it lacks, as a subclass
    named like it (``base`` itself when it has them all: the built-ins only). The same
    extension returns the same class.

    Raises:
        ValueError: two parts declare one key (the buffer's keys are one flat namespace, so
            they would silently share it), or declare it with different types.
    """
    have = typing.get_type_hints(base)
    extra: list[tuple[str, Any, Any]] = []
    declared = {name: _declarer(base, name) for name in have}
    for kind in PARTS:
        for schema in part_schemas(kind):
            hints = typing.get_type_hints(schema)
            for f in dataclasses.fields(schema):
                mine = _declarer(schema, f.name)
                if f.name in have:
                    if declared[f.name] is not mine:
                        raise ValueError(
                            f"{kind} schema {schema.__name__} declares buffer.{f.name}, which "
                            f"{declared[f.name].__name__} declares too: two parts would share one key; "
                            "rename one of them (a part's keys are buffer.<key>, one namespace)"
                        )
                    if hints[f.name] != have[f.name]:
                        raise ValueError(
                            f"{kind} schema {schema.__name__} declares buffer.{f.name} as "
                            f"{hints[f.name]}, but {declared[f.name].__name__} as {have[f.name]}"
                        )
                    continue
                have[f.name], declared[f.name] = hints[f.name], mine
                default = (
                    dataclasses.field(default_factory=f.default_factory)
                    if f.default_factory is not dataclasses.MISSING
                    else dataclasses.field(default=f.default)
                )
                extra.append((f.name, hints[f.name], default))
    if not extra:
        return base
    key = (base, *((n, t, repr(d)) for n, t, d in extra))
    if key not in _EXTENDED:
        cls = dataclasses.make_dataclass(base.__name__, extra, bases=(base,))
        cls.__module__, cls.__qualname__ = base.__module__, base.__qualname__
        _EXTENDED[key] = cls
    return _EXTENDED[key]


# Bytes per stored transition with one-number observations and actions and no goal
# (rlfw.buffers.storage: float32 obs, action and reward, two bools, two int32 counters); every
# real task needs more. The sampler adds its ``bytes_per_transition`` (the prioritized sampler's
# float64 sum tree: 16).
MIN_TRANSITION_BYTES = 4 * (1 + 1 + 1) + 2 + 2 * 4


def check_memory(node: Any) -> None:
    """Refuse a ``buffer.capacity`` whose storage cannot fit in this machine's memory even with
    the smallest observation (the observation sizes are known only once the env is built).

    Raises:
        ConfigError: one line naming the capacity, the lower bound of its size and the memory.
    """
    schema = registry("buffer.sampler").get(str(node.sampler)).schema
    per = MIN_TRANSITION_BYTES + int(getattr(schema, "bytes_per_transition", 0))
    need = int(node.capacity) * per
    have = memory_bytes()
    if have is not None:
        require(
            need <= have,
            f"buffer.capacity={node.capacity} needs at least {human_bytes(need)} ({per} bytes per "
            f"transition for the smallest observation, more for real ones) but this machine has "
            f"{human_bytes(have)} of memory; use a smaller buffer.capacity (1e6 is usual)",
        )
