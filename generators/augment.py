"""EDM's non-leaking augmentation (Karras et al. 2022, appendix F.2; after Karras et al. 2020,
"Training Generative Adversarial Networks with Limited Data").

Each training image is transformed with probability ``p`` per transform, and the network is
told which transform it got through 9 augmentation labels (``augment_dim`` = 9), so it learns
the augmented distribution as a *conditional* one and samples with zero labels come from the
clean data: nothing leaks. The transforms and their label entries, in order:

1. x-flip (50% whenever p > 0; EDM gives it weight 1e8): 1 label, the flip (0/1);
2. y-flip, with probability p: 1 label;
3. isotropic scaling by 2^(0.2 n), n ~ N(0, 1): 1 label, n;
4. rotation by an angle uniform in [-pi, pi]: 2 labels, cos(a) - 1 and sin(a);
5. anisotropic scaling by 2^(+-0.2 n) along the image axes (half of the time) or a uniformly
   random direction r: 2 labels, n cos(r) and n sin(r);
6. translation by 0.125 x (W, H) x (n_x, n_y): 2 labels, n_x and n_y.

A transform not drawn has label 0 (and is the identity). The geometric ones (3-6) are composed
into one inverse affine map per image and applied around the image centre, with reflection
padding. The one difference from EDM: EDM resamples through a 2x upsampling and downsampling
with the sym6 wavelet filter; here each output pixel averages four bilinear samples on a 2x
grid (a non-negative filter, so images stay within their range). Images with no geometric
transform are returned untouched, so p = 0 is exactly the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AUGMENT_DIM = 9
SCALE_STD = 0.2  # log2 scale
ANISO_STD = 0.2  # log2 scale
ANISO_ROTATE_PROB = 0.5  # else the anisotropic scaling is along the image axes
TRANSLATE_STD = 0.125  # fraction of the image size


def _mat(rows: list[list[torch.Tensor | float]], n: int, like: torch.Tensor) -> torch.Tensor:
    """A batch of 3x3 matrices (n, 3, 3) from entries that are scalars or (n,) tensors."""
    out = torch.zeros(n, 3, 3, dtype=like.dtype, device=like.device)
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            out[:, i, j] = v
    return out


def _scale(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    return _mat([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], sx.shape[0], sx)


def _rotate(a: torch.Tensor) -> torch.Tensor:
    c, s = a.cos(), a.sin()
    return _mat([[c, -s, 0], [s, c, 0], [0, 0, 1]], a.shape[0], a)


def _translate(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    return _mat([[1, 0, tx], [0, 1, ty], [0, 0, 1]], tx.shape[0], tx)


def _where(draw: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return torch.where(draw, value, torch.zeros_like(value))


def augment(images: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(augmented images, (N, 9) augmentation labels) for a batch (N, C, H, W), drawing from
    the global torch RNG on the images' device."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"augmentation probability must be in [0, 1], not {p}")
    n, _, h, w = images.shape
    dev, f32 = images.device, torch.float32

    def chosen(prob: float) -> torch.Tensor:
        return torch.rand(n, device=dev) < prob

    labels: list[torch.Tensor] = []
    # Pixel blitting: exact flips.
    xflip = _where(chosen(1.0 if p > 0 else 0.0), torch.randint(2, (n,), device=dev).bool())
    yflip = _where(chosen(p), torch.randint(2, (n,), device=dev).bool())
    images = torch.where(xflip[:, None, None, None], images.flip(3), images)
    images = torch.where(yflip[:, None, None, None], images.flip(2), images)
    labels += [xflip.to(f32), yflip.to(f32)]

    # Geometric transforms, as the inverse map from output to input coordinates.
    g_inv = torch.eye(3, device=dev, dtype=f32).expand(n, 3, 3)
    s = _where(chosen(p), torch.randn(n, device=dev))
    g_inv = g_inv @ _scale(2 ** (-SCALE_STD * s), 2 ** (-SCALE_STD * s))
    angle = _where(chosen(p), (torch.rand(n, device=dev) * 2 - 1) * math.pi)
    g_inv = g_inv @ _rotate(angle)  # the image turns by -angle
    a = torch.randn(n, device=dev)
    r = (torch.rand(n, device=dev) * 2 - 1) * math.pi
    r = _where(chosen(ANISO_ROTATE_PROB), r)
    a = _where(chosen(p), a)
    sa = 2 ** (ANISO_STD * a)
    g_inv = g_inv @ _rotate(-r) @ _scale(1 / sa, sa) @ _rotate(r)
    t = torch.randn(2, n, device=dev)
    t = _where(chosen(p)[None].expand(2, n), t)
    g_inv = g_inv @ _translate(-t[0] * w * TRANSLATE_STD, -t[1] * h * TRANSLATE_STD)
    labels += [s, angle.cos() - 1, angle.sin(), a * r.cos(), a * r.sin(), t[0], t[1]]

    moved = (s != 0) | (angle != 0) | (a != 0) | (t != 0).any(0)
    if moved.any():
        images = images.clone()
        images[moved] = _warp(images[moved], g_inv[moved])
    return images, torch.stack(labels, dim=1)


def _warp(images: torch.Tensor, g_inv: torch.Tensor) -> torch.Tensor:
    """Resample ``images`` so output pixel u (centred pixel coordinates, x right, y down)
    reads input pixel g_inv u, with reflection padding (the edge pixel not repeated)."""
    n, c, h, w = images.shape
    pad_x, pad_y = w - 1, h - 1  # the most reflection padding allows; zeros beyond it
    padded = F.pad(images, (pad_x, pad_x, pad_y, pad_y), mode="reflect")
    ph, pw = padded.shape[2:]
    # affine_grid works in the output's normalised coordinates (align_corners=False: x_norm =
    # 2 u / W at centred pixel u); map them to pixels, apply g_inv, normalise to the padded
    # image.
    to_px = torch.diag(torch.tensor([w / 2, h / 2, 1.0], device=g_inv.device, dtype=g_inv.dtype))
    to_norm = torch.diag(
        torch.tensor([2 / pw, 2 / ph, 1.0], device=g_inv.device, dtype=g_inv.dtype)
    )
    theta = (to_norm @ g_inv @ to_px)[:, :2]
    # 2x supersampling: bilinear samples at the centres of each pixel's four quarters, averaged.
    grid = F.affine_grid(theta, [n, c, 2 * h, 2 * w], align_corners=False)
    fine = F.grid_sample(
        padded, grid.to(images.dtype), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return F.avg_pool2d(fine, 2)
