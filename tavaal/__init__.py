"""tavaal: Task-Aware Variational Adversarial Active Learning (TA-VAAL) and its baselines."""

import os

# OpenMP threads that spin while waiting make torch many times slower whenever another busy process shares
# the cores (a small machine running a benchmark beside the tests, Ray workers beside the driver); passive waiting
# costs nothing on an idle machine. Must be set before torch loads its OpenMP runtime; a user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
