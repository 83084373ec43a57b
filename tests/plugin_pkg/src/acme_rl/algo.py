"""``algo=acme_sac``: SAC with one key of its own (``algo.acme_marker``), as another package
adds an algorithm to rlfw: a schema, a class, one ``register`` call, and the option node that
rlfw's conf/algo/<name>.yaml would otherwise be."""

# No ``from __future__ import annotations``: OmegaConf reads the annotations at run time.
from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

from rlfw.algos.sac import SAC, SACConfig
from rlfw.registry import register


@dataclass
class AcmeSACConfig(SACConfig):
    name: str = "acme_sac"
    acme_marker: int = 7  # a key only this algorithm has


class AcmeSAC(SAC):
    """SAC under another name (an algorithm's own code would override SAC's template methods)."""


register("algo", "acme_sac", AcmeSACConfig, AcmeSAC)
# The option itself (algo=acme_sac), in place of a YAML file in rlfw's conf/algo/
ConfigStore.instance().store(group="algo", name="acme_sac", node=AcmeSACConfig)
