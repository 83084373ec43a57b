"""acme_rl: an algorithm (``algo=acme_sac``), a noise (``noise=acme_uniform``), a replay sampler
(``buffer.sampler=acme_recent``), a logger (``logger=acme_jsonl``) and an env family
(``env.family=acme_fetch``) for rlfw, found by rlfw through this package's ``rlfw.components``
entry points."""
