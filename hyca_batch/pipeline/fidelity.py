"""How far a cached video is from its uncached reference: PSNR and SSIM of frames, relative L2 of latents.

SSIM is the standard Wang et al. (2004) form with an 11-tap Gaussian window (sigma 1.5) computed per frame
and channel and averaged; written here in a few lines of torch rather than pulling in scikit-image for one
function. Frames are uint8 (F, H, W, 3), compared at their full 0..255 range.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


def _as_tensor(frames: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(frames), dtype=torch.float64)


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB; inf for identical videos."""
    a, b = _as_tensor(reference), _as_tensor(test)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    mse = torch.mean((a - b) ** 2).item()
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean structural similarity over frames and channels, in [-1, 1]; 1 for identical videos."""
    a, b = _as_tensor(reference), _as_tensor(test)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    # (F, H, W, C) -> (F*C, 1, H, W): every frame-channel an image.
    a = a.permute(0, 3, 1, 2).reshape(-1, 1, a.shape[1], a.shape[2])
    b = b.permute(0, 3, 1, 2).reshape(-1, 1, b.shape[1], b.shape[2])
    size = min(11, a.shape[-1], a.shape[-2])
    g = _gaussian_window(size)

    def blur(x: torch.Tensor) -> torch.Tensor:  # separable Gaussian, valid region only
        x = F.conv2d(x, g.view(1, 1, 1, -1))
        return F.conv2d(x, g.view(1, 1, -1, 1))

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + _C1) * (2 * cov + _C2)) / ((mu_a**2 + mu_b**2 + _C1) * (var_a + var_b + _C2))
    return s.mean().item()


def relative_l2(reference: torch.Tensor, test: torch.Tensor) -> float:
    """||test - reference|| / ||reference||."""
    reference, test = reference.double(), test.double()
    return (torch.linalg.vector_norm(test - reference) / torch.linalg.vector_norm(reference).clamp_min(1e-30)).item()
