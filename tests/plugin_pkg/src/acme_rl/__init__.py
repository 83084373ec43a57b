"""acme_rl: an algorithm (``algo=acme_sac``) and a noise (``noise=acme_uniform``) for rlfw,
found by rlfw through this package's ``rlfw.components`` entry points."""
