"""Bilinear fusion of an appearance map and a part map, exact and compact (Tensor Sketch).

For appearance A (B, C_a, h, w) and parts P (B, C_p, h, w) the part-aligned bilinear feature is

    f = 1/(h*w) * sum_x vec(a_x p_x^T)                                  (B, C_a * C_p)

Compact bilinear pooling (Gao et al., CVPR 2016) replaces vec(a p^T) by the Tensor Sketch
psi(a) * psi(p) (circular convolution of two count sketches, computed as a product of FFTs), a D-dim vector whose
inner products approximate those of the exact feature: <TS(a,p), TS(a',p')> ~= <a,a'> <p,p'>.
Both poolings end with a signed square root and L2 normalisation.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


def signed_sqrt(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """sign(x) * sqrt(|x|); eps keeps the gradient finite at zero."""
    return torch.sign(x) * torch.sqrt(x.abs() + eps)


def exact_bilinear_pool(appearance: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
    """(B, C_a, h, w), (B, C_p, h, w) -> (B, C_a * C_p): location-averaged outer products (no normalisation)."""
    if appearance.shape[0] != parts.shape[0] or appearance.shape[2:] != parts.shape[2:]:
        raise ValueError(f"maps must share batch and spatial size: {tuple(appearance.shape)} vs {tuple(parts.shape)}")
    b, _, h, w = appearance.shape
    outer = torch.einsum("bahw,bphw->bap", appearance, parts) / (h * w)
    return outer.reshape(b, -1)


class CountSketch(nn.Module):
    """Fixed random projection v -> y with y[h(i)] += s(i) v[i]. (..., C) -> (..., D).

    The hash h and sign s are buffers so the sketch is saved with the checkpoint and identical after reloading.
    """

    index: torch.Tensor
    sign: torch.Tensor

    def __init__(self, in_dim: int, out_dim: int, generator: torch.Generator) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.register_buffer("index", torch.randint(out_dim, (in_dim,), generator=generator))
        self.register_buffer("sign", torch.randint(2, (in_dim,), generator=generator).float() * 2 - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_dim)
        out = flat.new_zeros(flat.shape[0], self.out_dim)
        out.index_add_(1, self.index, flat * self.sign.to(flat.dtype))
        return out.reshape(*x.shape[:-1], self.out_dim)


class CompactBilinearPooling(nn.Module):
    """Tensor Sketch bilinear pooling of two maps, averaged over locations.

    (B, C_a, h, w), (B, C_p, h, w) -> (B, D). Not normalised: callers apply ``signed_sqrt`` and L2 themselves.
    """

    def __init__(self, appearance_dim: int, part_dim: int, output_dim: int, seed: int = 0) -> None:
        super().__init__()
        if output_dim < 2:
            raise ValueError(f"output_dim must be >= 2, got {output_dim}")
        generator = torch.Generator().manual_seed(seed)
        self.output_dim = output_dim
        self.sketch_appearance = CountSketch(appearance_dim, output_dim, generator)
        self.sketch_parts = CountSketch(part_dim, output_dim, generator)

    def forward(self, appearance: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
        if appearance.shape[0] != parts.shape[0] or appearance.shape[2:] != parts.shape[2:]:
            raise ValueError(
                f"maps must share batch and spatial size: {tuple(appearance.shape)} vs {tuple(parts.shape)}"
            )
        # FFTs in float32: half precision loses too much in the frequency-domain product.
        a = appearance.float().flatten(2).transpose(1, 2)  # (B, hw, C_a)
        p = parts.float().flatten(2).transpose(1, 2)  # (B, hw, C_p)
        fa = torch.fft.rfft(self.sketch_appearance(a), dim=-1)
        fp = torch.fft.rfft(self.sketch_parts(p), dim=-1)
        # The sketch is linear in each outer product, so averaging over locations in the frequency domain
        # needs one inverse FFT per image instead of one per location.
        return torch.fft.irfft((fa * fp).mean(dim=1), n=self.output_dim, dim=-1)


def normalise_bilinear(x: torch.Tensor) -> torch.Tensor:
    """(B, D) -> signed square root, then L2 normalisation per row."""
    return F.normalize(signed_sqrt(x), dim=1)
