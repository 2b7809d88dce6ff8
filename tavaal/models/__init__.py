"""Task models (registered in ``MODELS``), the ranker (LossNet), the VAE and the discriminator."""

from tavaal.models import mlp, resnet, segmentation, small_cnn  # noqa: F401  (registration)
from tavaal.models.base import TaskOutput, build_task_model
from tavaal.models.lossnet import LossNet
from tavaal.models.vae import VAE, Discriminator

__all__ = ["TaskOutput", "build_task_model", "LossNet", "VAE", "Discriminator"]
