"""The built-in components. Importing this module imports each component package, and each
registers its options (schema in Hydra's ConfigStore, class in its registry) with
:func:`rlfw.registry.register`. A plug-in registers the same way from its own module.
"""

import rlfw.algos
import rlfw.buffers
import rlfw.callbacks
import rlfw.envs
import rlfw.noise  # noqa: F401
