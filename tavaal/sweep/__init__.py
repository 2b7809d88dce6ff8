"""``python -m tavaal.sweep``: a Ray Tune sweep of AL experiments, tracked in MLflow.

cli (flags, main) -> runner (checks, the Tuner, the summary) -> trial (the Tune trainable) and callback (MLflow on
the driver); presets holds what cli and runner share. Nothing imports upward, and importing the package imports
none of them (nor Ray).
"""
