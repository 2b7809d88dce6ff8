"""tavaal: Task-Aware Variational Adversarial Active Learning (TA-VAAL) and its baselines."""

__version__ = "0.1.0"
