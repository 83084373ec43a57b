"""Training: a short loop (:mod:`.loop`) over parts it is handed: a collector
(:mod:`.collector`), an evaluator (:mod:`.evaluation`), a checkpointer (:mod:`.checkpoint`),
a worker context (:mod:`.context`) and callbacks, among them the run's files (:mod:`.outputs`).
"""
