"""The keys each replay part declares, read from its registry.

A relabeler or sampler registers with the dataclass schema of its own keys::

    register("buffer.sampler", "prioritized", PrioritizedSamplerConfig, PrioritizedSampler)

The schema's first field is the choice key itself (``relabel`` or ``sampler``, the last part of
the registry's key); the other fields are the part's keys. The buffer's config node holds the
keys of every registered part, flat (``buffer.alpha``, ``buffer.strategy``), so any buffer option
composes with any part: ``buffer=her buffer.sampler=prioritized buffer.alpha=0.5``
(:func:`rlfw.buffers.config.buffer_schema`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rlfw.registry import registry

# The registries of the parts chosen by a key of the buffer config (buffer.relabel, buffer.sampler).
PARTS = ("buffer.relabel", "buffer.sampler")


def part_schemas(kind: str) -> list[type]:
    """The distinct schemas registered in ``registry(kind)`` (``"buffer.sampler"``), in the
    order of their names; options registered without a schema declare no keys."""
    reg = registry(kind)
    out: list[type] = []
    for name in reg.names():
        schema = reg.get(name).schema
        if schema is not None and schema not in out:
            out.append(schema)
    return out


def option_keys(kind: str, cfg: Any) -> dict[str, Any]:
    """The values in ``cfg`` (a buffer config node) of every key the options of
    ``registry(kind)`` declare, the choice key itself left out: for ``"buffer.sampler"`` and the
    built-ins ``{alpha, beta0, beta_final_step, priority_eps}``. What a part's ``from_config``
    passes to its constructor (a part ignores the keys of the other options).
    """
    choice = kind.rsplit(".", 1)[-1]
    keys: dict[str, Any] = {}
    for schema in part_schemas(kind):
        for f in dataclasses.fields(schema):
            if f.name != choice:
                keys[f.name] = getattr(cfg, f.name)
    return keys
