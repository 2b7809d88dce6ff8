"""Task models, ranker (LossNet), VAE and discriminator: shapes, gradients, determinism, bf16."""

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from tavaal.errors import ConfigError
from tavaal.losses import discriminator_loss, per_sample_task_loss, ranking_loss, vae_adversarial_loss, vae_loss
from tavaal.models import VAE, Discriminator, LossNet, TaskOutput, build_task_model
from tavaal.models.base import model_task
from tavaal.registry import MODELS

# input shapes each registered model must handle; a newly registered model must be added here
MODEL_SHAPES = {
    "resnet18": [(3, 32, 32), (1, 28, 28)],
    "small_cnn": [(1, 28, 28), (3, 32, 32), (1, 16, 16)],
    "mlp": [(2,)],
    "seg_small": [(3, 32, 32), (3, 20, 36)],
    "deeplabv3_resnet50": [(3, 32, 64)],
}
CASES = [
    pytest.param(name, shape, id=f"{name}-{'x'.join(map(str, shape))}")
    for name in MODELS.names()
    for shape in MODEL_SHAPES.get(name, [(1, 28, 28)])
]
VAE_SHAPES = [(3, 32, 32), (1, 28, 28), (1, 16, 16), (2,)]
B = 4


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # batch-4 models gain nothing from 2 threads, and with the default OpenMP wait policy every op
    # of a 2-thread process stalls ~30 ms while another process holds a core (measured: 150x slower)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_all_grads_finite(*modules: torch.nn.Module) -> None:
    for module in modules:
        for pname, p in module.named_parameters():
            assert p.grad is not None, f"{type(module).__name__}.{pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{type(module).__name__}.{pname} has a non-finite gradient"


def test_every_registered_model_has_test_shapes():
    assert set(MODELS.names()) == set(MODEL_SHAPES)


@pytest.mark.parametrize("name,shape", CASES)
def test_task_model_shapes_and_feature_channels(name, shape):
    model = build_task_model(name, shape, num_classes=7)
    out = model(torch.randn(B, *shape))
    assert isinstance(out, TaskOutput)
    per_pixel = model_task(model) == "segmentation"
    assert out.logits.shape == ((B, 7) + tuple(shape[1:]) if per_pixel else (B, 7))
    assert out.embedding.shape == (B, model.embedding_dim)
    assert len(out.features) == len(model.feature_channels) == 4
    assert [f.shape[1] for f in out.features] == list(model.feature_channels)
    assert all(f.shape[0] == B for f in out.features)


@pytest.mark.parametrize("name,shape", CASES)
def test_ce_plus_ranking_loss_reaches_every_parameter(name, shape):
    model = build_task_model(name, shape, num_classes=5)
    ranker = LossNet(model.feature_channels)
    out = model(torch.randn(B, *shape))
    y = torch.tensor([0, 1, 2, 3])
    if model_task(model) == "segmentation":
        y = torch.randint(0, 5, (B, *shape[1:]))
        y[0, :2] = 255  # ignored pixels
    ce = per_sample_task_loss(out.logits, y)
    pred = ranker(out.features)
    assert pred.shape == (B,)
    (ce.mean() + ranking_loss(pred, ce)).backward()
    assert_all_grads_finite(model, ranker)


def test_resnet18_is_the_cifar_variant():
    model = build_task_model("resnet18", (1, 28, 28), 10)
    assert model.conv1.in_channels == 1 and model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    out = model(torch.randn(2, 1, 28, 28))
    assert [tuple(f.shape[2:]) for f in out.features] == [(28, 28), (14, 14), (7, 7), (4, 4)]
    assert model.embedding_dim == 512
    n_params = sum(p.numel() for p in model.parameters())
    assert 11.0e6 < n_params < 11.3e6  # ResNet-18 (CIFAR) has ~11.2M parameters


def test_build_task_model_errors():
    with pytest.raises(ConfigError, match="unknown model"):
        build_task_model("vgg99", (3, 32, 32), 10)
    with pytest.raises(ValueError, match="input_shape"):
        build_task_model("small_cnn", (2,), 10)
    with pytest.raises(ValueError, match="input_shape"):
        build_task_model("mlp", (1, 28, 28), 10)


def test_lossnet_pools_28x28_features_by_their_actual_size():
    # ResNet-18 block outputs for 28x28 inputs; the public code's AvgPool2d(32) fails on these
    channels, sizes = (64, 128, 256, 512), (28, 14, 7, 4)
    ranker = LossNet(channels)
    vectors = [torch.randn(B, c) for c in channels]
    maps = [v[:, :, None, None].expand(B, c, s, s) for v, c, s in zip(vectors, channels, sizes)]
    pred = ranker(maps)
    assert pred.shape == (B,)
    # a spatially constant map pools to its value: same as passing the [B, C] vectors directly
    torch.testing.assert_close(pred, ranker(vectors))
    # and it is the mean, not the sum or the max
    noisy = [m + torch.randn_like(m) for m in maps]
    pooled = [n.mean(dim=(2, 3)) for n in noisy]
    torch.testing.assert_close(ranker(noisy), ranker(pooled))


def test_lossnet_rejects_wrong_feature_count():
    with pytest.raises(ValueError, match="expects 4 features"):
        LossNet((8, 8, 8, 8))([torch.randn(B, 8)] * 3)


@pytest.mark.parametrize("cond_dim", [0, 1])
@pytest.mark.parametrize("shape", VAE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_vae_and_discriminator_shapes_and_gradients(shape, cond_dim):
    vae = VAE(shape, latent_dim=6, base_channels=8, cond_dim=cond_dim)
    disc = Discriminator(6, cond_dim=cond_dim, hidden=16)
    x_l, x_u = torch.randn(B, *shape), torch.randn(B, *shape)
    r_hat = torch.randn(B) if cond_dim else None
    r_dec = torch.sigmoid(r_hat) if cond_dim else None
    recon, z, mu, logvar = vae(x_l, r_dec)
    assert recon.shape == x_l.shape
    assert z.shape == mu.shape == logvar.shape == (B, 6)
    _, _, mu_u, _ = vae(x_u, r_dec)
    logits_l, logits_u = disc(mu, r_hat), disc(mu_u, r_hat)
    assert logits_l.shape == (B,)
    loss = vae_loss(x_l, recon, mu, logvar) + vae_adversarial_loss(logits_l, logits_u)
    loss = loss + discriminator_loss(disc(mu.detach(), r_hat), disc(mu_u.detach(), r_hat))
    loss.backward()
    assert_all_grads_finite(vae, disc)


def test_vae_published_sizes_for_32_and_28():
    vae32 = VAE((3, 32, 32), latent_dim=32, base_channels=128, cond_dim=1)
    convs = [m for m in vae32.encoder if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 256, 512, 1024]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) and c.bias is None for c in convs)
    assert vae32.fc_mu.in_features == 1024 * 2 * 2  # 32 -> 16 -> 8 -> 4 -> 2
    assert vae32.decoder[0].in_features == 32 + 1 and vae32.decoder[0].out_features == 1024 * 4 * 4
    vae32.eval()
    recon, *_ = vae32(torch.randn(2, 3, 32, 32), torch.rand(2))
    assert recon.shape == (2, 3, 32, 32)
    vae28 = VAE((1, 28, 28), latent_dim=28, base_channels=8)
    assert vae28.fc_mu.in_features == 64 * 2 * 2  # 28 -> 14 -> 7 -> 3 -> 2 (the last conv has kernel 3)
    assert vae28.decoder[0].out_features == 64 * 4 * 4  # decodes 4 -> 7 -> 14 -> 28


def test_vae_28x28_is_the_official_fashion_mnist_shape():
    # official TA-VAAL VAE(28, 1, 3): last encoder conv k3 (3x3 -> 2x2x1024), first decoder ConvTranspose k3
    # (4 -> 7), then 7 -> 14 -> 28: exactly 28x28, nothing cropped
    vae = VAE((1, 28, 28), latent_dim=28, base_channels=128, cond_dim=1).eval()
    convs = [m for m in vae.encoder if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(4, 4), (4, 4), (4, 4), (3, 3)]
    x = torch.randn(2, 1, 28, 28)
    assert vae.encoder[:-1](x).shape == (2, 1024, 2, 2)
    assert vae.fc_mu.in_features == 1024 * 2 * 2
    ups = [m for m in vae.decoder if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [u.kernel_size for u in ups] == [(3, 3), (4, 4), (4, 4), (1, 1)]
    z = torch.cat([torch.randn(2, 28), torch.rand(2, 1)], dim=1)
    sizes, h = [], z
    for m in vae.decoder:
        h = m(h)
        if isinstance(m, torch.nn.ConvTranspose2d):
            sizes.append(tuple(h.shape[2:]))
    assert sizes == [(7, 7), (14, 14), (28, 28), (28, 28)]  # the decoder's own output: 28x28, no crop
    recon, *_ = vae(x, torch.rand(2))
    assert recon.shape == x.shape


def test_vae_other_sizes_keep_their_shape():
    # 32x32 and 16x16 exact, other sides decoded to 8 ceil(s / 8) and center-cropped
    for shape, flat, start in [((3, 32, 32), 2 * 2, (4, 4)), ((1, 16, 16), 1, (2, 2)), ((1, 20, 36), 1 * 2, (3, 5))]:
        vae = VAE(shape, latent_dim=6, base_channels=8).eval()
        assert vae.fc_mu.in_features == 64 * flat and vae._start == (64, *start)
        assert vae(torch.randn(2, *shape))[0].shape == (2, *shape)


def test_vae_eval_mode_is_deterministic_and_uses_mu():
    vae = VAE((1, 28, 28), latent_dim=6, base_channels=8)
    x = torch.randn(B, 1, 28, 28)
    vae.train()
    vae(x)  # move the BN running stats off their init
    _, z_train, mu_train, _ = vae(x)
    assert not torch.allclose(z_train, mu_train)  # training samples z = mu + eps * sigma
    vae.eval()
    mu1, logvar1 = vae.encode(x)
    mu2, logvar2 = vae.encode(x)
    assert torch.equal(mu1, mu2) and torch.equal(logvar1, logvar2)
    _, z, mu, _ = vae(x)
    assert torch.equal(z, mu) and torch.equal(mu, mu1)


def test_conditioning_is_used_and_accepts_b_or_b1():
    vae = VAE((1, 16, 16), latent_dim=6, base_channels=8, cond_dim=1).eval()
    disc = Discriminator(6, cond_dim=1, hidden=16)
    z = torch.randn(B, 6)
    r = torch.rand(B)
    torch.testing.assert_close(vae.decode(z, r), vae.decode(z, r[:, None]))
    torch.testing.assert_close(disc(z, r), disc(z, r[:, None]))
    assert not torch.allclose(vae.decode(z, torch.zeros(B)), vae.decode(z, torch.ones(B)))
    assert not torch.allclose(disc(z, torch.zeros(B)), disc(z, torch.full((B,), 5.0)))


def test_conditioning_errors():
    x = torch.randn(B, 2)
    with pytest.raises(ValueError, match="cond_dim=1"):
        VAE((2,), latent_dim=4, base_channels=8, cond_dim=1)(x)
    with pytest.raises(ValueError, match="cond_dim=1"):
        Discriminator(4, cond_dim=1)(torch.randn(B, 4))
    with pytest.raises(ValueError, match="cond_dim=0"):
        Discriminator(4, cond_dim=0)(torch.randn(B, 4), torch.rand(B))
    with pytest.raises(ValueError, match="r must be"):
        Discriminator(4, cond_dim=1)(torch.randn(B, 4), torch.rand(B, 2))
    with pytest.raises(ValueError, match="H, W >= 16"):
        VAE((1, 8, 8))


def test_discriminator_returns_logits_with_kaiming_init():
    disc = Discriminator(32, cond_dim=1, hidden=512)
    assert isinstance(disc.net[-1], torch.nn.Linear)  # no sigmoid: losses are BCE-with-logits
    first = disc.net[0]
    assert first.weight.std().item() == pytest.approx(math.sqrt(2 / 33), rel=0.1)  # kaiming normal, fan_in 33
    assert first.bias.abs().sum().item() == 0.0
    logits = disc(torch.randn(256, 32) * 3, torch.randn(256) * 3)
    assert (logits < 0).any() and (logits > 0).any()


def test_bf16_autocast_on_cpu_small_cnn_and_vae():
    model = build_task_model("small_cnn", (1, 28, 28), 10)
    ranker = LossNet(model.feature_channels)
    vae = VAE((1, 28, 28), latent_dim=6, base_channels=8, cond_dim=1)
    disc = Discriminator(6, cond_dim=1, hidden=16)
    x = torch.randn(B, 1, 28, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        ce = F.cross_entropy(out.logits.float(), torch.tensor([0, 1, 2, 3]), reduction="none")
        r_hat = ranker(out.features).float()
        task_loss = ce.mean() + ranking_loss(r_hat, ce)
        recon, _, mu, logvar = vae(x, torch.sigmoid(r_hat.detach()))
        v_loss = vae_loss(x, recon.float(), mu.float(), logvar.float())
        v_loss = v_loss + vae_adversarial_loss(disc(mu, r_hat.detach()).float(), disc(mu, r_hat.detach()).float())
    assert out.logits.dtype == torch.bfloat16 and recon.shape == x.shape
    (task_loss + v_loss).backward()
    assert torch.isfinite(task_loss) and torch.isfinite(v_loss)
    assert_all_grads_finite(model, ranker, vae, disc)


def test_models_and_losses_do_not_import_ray_or_mlflow():
    code = "import sys, tavaal.models, tavaal.losses; print(sorted({'ray', 'mlflow'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
