"""tavaal: Task-Aware Variational Adversarial Active Learning (TA-VAAL) and its baselines."""

import os

# OpenMP threads that spin while waiting make torch 25-150x slower whenever another busy process shares
# the cores (measured on 2-core machines: one small-CNN epoch 0.6 s -> 15 s); passive waiting costs
# nothing on an idle machine. Must be set before torch loads its OpenMP runtime; a user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
