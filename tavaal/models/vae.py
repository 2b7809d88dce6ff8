"""VAAL's VAE and discriminator (Sinha et al. 2019), with TA-VAAL's ranker conditioning (Kim et al. 2021).

Image VAE (as published for 32x32): encoder 4 x [Conv k4 s2 p1 (no bias), BN, ReLU] with widths
base * (1, 2, 4, 8), flatten, Linear -> mu and Linear -> log sigma^2. Decoder: Linear([z, r]) ->
(8 base) x s_h x s_w, 3 x [ConvTranspose k4 s2 p1, BN, ReLU] halving the widths down to base, then a
k1 ConvTranspose to image channels, no output activation.

28x28 (the official Fashion-MNIST VAE, ``VAE(28, 1, 3)``): the last encoder conv and the first decoder
ConvTranspose have kernel 3, so the encoder ends at 2 x 2 (28 -> 14 -> 7 -> 3 -> 2, flatten 8 base x 2 x 2)
and the decoder runs 4 -> 7 -> 14 -> 28, exactly, with no crop.

Other sizes (H, W >= 16; ``conv_plan``, per side): the encoder's spatial output is floor(H/16) (32 -> 2,
16 -> 1) and the flatten size follows it. The decoder starts at s = ceil(H/8), producing 8 s >= H, and
center-crops to H: 32 -> 4 -> 32 exactly (the published sizes), 16 -> 2 -> 16 exactly, 20 -> 3 -> 24
cropped to 20.

Vector inputs (D,): an MLP encoder/decoder (two hidden layers of ``base_channels`` units) with the
same interface.

Init, as the public VAAL/TA-VAAL code effectively does it: kaiming-normal (fan-in, ReLU gain) weights
and zero biases for the Conv2d/Linear layers inside encoder, decoder and discriminator; BN weight 1,
bias 0. The public init loop skips ConvTranspose layers and the mu/log sigma^2 heads, which keep
PyTorch's default init here too (a kaiming-normal mu head on 4096 ReLU inputs starts with a large KL).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


def kaiming_init(module: nn.Module) -> None:
    """Kaiming-normal Conv2d/Linear weights, zero biases; BN weight 1, bias 0 (VAAL's ``kaiming_init``)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@dataclass(frozen=True)
class ConvPlan:
    """Sizes of the image VAE for one input side: the last encoder conv's kernel and output size, the decoder's
    start size and its first ConvTranspose's kernel (the others are k4 s2 p1, doubling)."""

    enc_kernel: int
    enc_out: int
    dec_start: int
    dec_kernel: int


def conv_plan(side: int) -> ConvPlan:
    """28: the official Fashion-MNIST shape (k3, 3 -> 2; 4 -> 7 -> 14 -> 28); else k4 throughout, s // 16 and
    ceil(s / 8) (the decoder's 8 ceil(s / 8) >= s is center-cropped to s)."""
    if side == 28:
        return ConvPlan(enc_kernel=3, enc_out=2, dec_start=4, dec_kernel=3)
    return ConvPlan(enc_kernel=4, enc_out=side // 16, dec_start=math.ceil(side / 8), dec_kernel=4)


def _conditioned(z: Tensor, r: Tensor | None, cond_dim: int, who: str) -> Tensor:
    """Return ``[z, r]`` (cond_dim 1) or ``z`` (cond_dim 0); ``r`` is ``[B]`` or ``[B, 1]``."""
    if cond_dim == 0:
        if r is not None:
            raise ValueError(f"{who} was built with cond_dim=0 but got r; build it with cond_dim=1")
        return z
    if r is None:
        raise ValueError(f"{who} was built with cond_dim=1 and needs r ([B] or [B, 1]), got None")
    if r.dim() == 1:
        r = r.unsqueeze(1)
    if r.shape != (z.shape[0], 1):
        raise ValueError(f"{who}: r must be [B] or [B, 1] with B={z.shape[0]}, got shape {tuple(r.shape)}")
    return torch.cat([z, r.to(z.dtype)], dim=1)


class VAE(nn.Module):
    """``forward(x, r=None) -> (recon, z, mu, logvar)``; recon has x's shape, z/mu/logvar are ``[B, latent]``.

    ``r`` (cond_dim=1) is the ranker's normalized predicted loss sigma(r_hat), ``[B]`` or ``[B, 1]``;
    the caller applies the sigmoid. In eval mode z = mu (deterministic scoring).
    """

    def __init__(
        self, input_shape: tuple[int, ...], latent_dim: int = 32, base_channels: int = 128, cond_dim: int = 0
    ) -> None:
        super().__init__()
        if cond_dim not in (0, 1):
            raise ValueError(f"cond_dim must be 0 (VAAL) or 1 (TA-VAAL), got {cond_dim}")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.latent_dim, self.cond_dim = latent_dim, cond_dim
        if len(self.input_shape) == 3:
            self._build_conv(base_channels)
        elif len(self.input_shape) == 1:
            self._build_mlp(base_channels)
        else:
            raise ValueError(f"VAE input_shape must be (C, H, W) or (D,), got {input_shape}")
        kaiming_init(self.encoder)
        kaiming_init(self.decoder)

    def _build_conv(self, base: int) -> None:
        c, h, w = self.input_shape
        if min(h, w) < 16:
            raise ValueError(f"the image VAE needs H, W >= 16, got input_shape {self.input_shape}")
        ph, pw = conv_plan(h), conv_plan(w)
        widths = [base, 2 * base, 4 * base, 8 * base]
        kernels: list[int | tuple[int, int]] = [4, 4, 4, (ph.enc_kernel, pw.enc_kernel)]
        enc: list[nn.Module] = []
        for c_in, c_out, k in zip([c] + widths[:-1], widths, kernels):
            enc += [nn.Conv2d(c_in, c_out, k, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        flat = widths[-1] * ph.enc_out * pw.enc_out
        self.fc_mu = nn.Linear(flat, self.latent_dim)
        self.fc_logvar = nn.Linear(flat, self.latent_dim)
        self._start = (widths[-1], ph.dec_start, pw.dec_start)
        dec: list[nn.Module] = [
            nn.Linear(self.latent_dim + self.cond_dim, widths[-1] * ph.dec_start * pw.dec_start),
            nn.Unflatten(1, self._start),
        ]
        kernels = [(ph.dec_kernel, pw.dec_kernel), 4, 4]
        for c_in, c_out, k in zip(widths[:0:-1], widths[-2::-1], kernels):
            dec += [nn.ConvTranspose2d(c_in, c_out, k, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        dec.append(nn.ConvTranspose2d(base, c, 1))
        self.decoder = nn.Sequential(*dec)

    def _build_mlp(self, hidden: int) -> None:
        (d,) = self.input_shape
        self.encoder = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.fc_mu = nn.Linear(hidden, self.latent_dim)
        self.fc_logvar = nn.Linear(hidden, self.latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(self.latent_dim + self.cond_dim, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, d),
        )  # fmt: skip

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [B, *input_shape] -> (mu, logvar)``, each ``[B, latent]``."""
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z: Tensor, r: Tensor | None = None) -> Tensor:
        """``z [B, latent]`` (and ``r`` when cond_dim=1) -> reconstruction ``[B, *input_shape]``."""
        out = self.decoder(_conditioned(z, r, self.cond_dim, "VAE"))
        if out.dim() == 4 and tuple(out.shape[2:]) != self.input_shape[1:]:  # sides that are not 8 s (nor 28)
            _, h, w = self.input_shape
            top, left = (out.shape[2] - h) // 2, (out.shape[3] - w) // 2
            out = out[:, :, top : top + h, left : left + w]
        return out

    def forward(self, x: Tensor, r: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.decode(z, r), z, mu, logvar


class Discriminator(nn.Module):
    """MLP on ``[mu, r]``: -> hidden -> hidden -> 1 with ReLU. Returns LOGITS ``[B]``; P(labeled) = sigmoid.

    TA-VAAL passes the raw r_hat (cond_dim=1); VAAL passes mu alone (cond_dim=0).
    """

    def __init__(self, latent_dim: int, cond_dim: int = 0, hidden: int = 512) -> None:
        super().__init__()
        if cond_dim not in (0, 1):
            raise ValueError(f"cond_dim must be 0 (VAAL) or 1 (TA-VAAL), got {cond_dim}")
        self.cond_dim = cond_dim
        self.net = nn.Sequential(
            nn.Linear(latent_dim + cond_dim, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, 1),
        )  # fmt: skip
        kaiming_init(self.net)

    def forward(self, mu: Tensor, r: Tensor | None = None) -> Tensor:
        return self.net(_conditioned(mu, r, self.cond_dim, "Discriminator")).squeeze(1)
