"""Pure PyTorch + numpy core: pool state, batches, training, scoring, selection, metrics, seeding.

Nothing under ``tavaal.core`` imports ray or mlflow (a test checks this in a subprocess).
"""
