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
import math

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

    # How the circular convolution is computed, all giving the same numbers (up to float rounding):
    # "fft": torch.fft (ONNX DFT ops when exported); "dft_matmul": count sketch, then the real DFT as matmuls with
    # fixed cos/sin matrices; "folded_matmul": count sketch and DFT folded into one (C, D//2+1) matrix pair per
    # input, computed from the sketch buffers by ``set_spectral`` (not saved: the checkpoint stays the same).
    SPECTRAL_MODES: tuple[str, ...] = ("fft", "dft_matmul", "folded_matmul")

    def __init__(self, appearance_dim: int, part_dim: int, output_dim: int, seed: int = 0) -> None:
        super().__init__()
        self.spectral = "fft"
        # Filled by set_spectral for the matmul modes only (ONNX export); None buffers are left out of the state dict,
        # so checkpoints never hold them. (Non-persistent buffers would not reach the ONNX initializers.)
        self.forward_dft: torch.Tensor | None
        self.folded_appearance: torch.Tensor | None
        self.folded_parts: torch.Tensor | None
        self.inverse_dft: torch.Tensor | None
        for name in ("forward_dft", "folded_appearance", "folded_parts", "inverse_dft"):
            self.register_buffer(name, None)
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
        if self.spectral in ("dft_matmul", "folded_matmul"):
            if self.inverse_dft is None:
                raise RuntimeError(
                    f"{self.spectral} needs set_spectral({self.spectral!r}) after the weights are loaded"
                )
            if self.spectral == "dft_matmul":
                assert self.forward_dft is not None
                fa = self.sketch_appearance(a) @ self.forward_dft  # (B, hw, 2 * bins): [cos | sin] parts
                fp = self.sketch_parts(p) @ self.forward_dft
            else:
                assert self.folded_appearance is not None and self.folded_parts is not None
                fa, fp = a @ self.folded_appearance, p @ self.folded_parts
            bins = fa.shape[-1] // 2
            # rfft(s) = r - i * im for [r | im] = s @ [cos | sin]; (ra - i ia)(rp - i ip) = (ra rp - ia ip) - i (...)
            ra, ia, rp, ip = fa[..., :bins], fa[..., bins:], fp[..., :bins], fp[..., bins:]
            spectrum = torch.cat([(ra * rp - ia * ip).mean(dim=1), (ra * ip + ia * rp).mean(dim=1)], dim=-1)
            return spectrum @ self.inverse_dft
        if self.spectral != "fft":
            raise ValueError(f"spectral must be one of {self.SPECTRAL_MODES}, got {self.spectral!r}")
        fa = torch.fft.rfft(self.sketch_appearance(a), dim=-1)
        fp = torch.fft.rfft(self.sketch_parts(p), dim=-1)
        # The sketch is linear in each outer product, so averaging over locations in the frequency domain
        # needs one inverse FFT per image instead of one per location.
        return torch.fft.irfft((fa * fp).mean(dim=1), n=self.output_dim, dim=-1)

    def set_spectral(self, mode: str) -> None:
        """Choose how forward computes the convolution (see SPECTRAL_MODES); call after loading weights."""
        if mode not in self.SPECTRAL_MODES:
            raise ValueError(f"spectral must be one of {self.SPECTRAL_MODES}, got {mode!r}")
        self.spectral = mode
        buffers: dict[str, torch.Tensor | None] = dict.fromkeys(
            ("forward_dft", "folded_appearance", "folded_parts", "inverse_dft")
        )
        if mode != "fft":
            device = self.sketch_appearance.index.device
            forward, inverse = real_dft_matrices(self.output_dim)
            buffers["inverse_dft"] = inverse.float().to(device)
            if mode == "dft_matmul":
                buffers["forward_dft"] = forward.float().to(device)
            else:
                for name, sketch in (
                    ("folded_appearance", self.sketch_appearance),
                    ("folded_parts", self.sketch_parts),
                ):
                    dense = torch.zeros(sketch.in_dim, self.output_dim, dtype=torch.float64)  # the count sketch
                    dense[torch.arange(sketch.in_dim), sketch.index.cpu()] = sketch.sign.cpu().double()
                    buffers[name] = (dense @ forward).float().to(device)  # (C, 2 * bins)
        for name, value in buffers.items():
            setattr(self, name, value)


def real_dft_matrices(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 forward (n, 2 * bins) = [cos | sin] and inverse (2 * bins, n) matrices of the real DFT, bins = n//2+1.

    rfft(x) = r - i * im with [r | im] = x @ forward; irfft(re - i * im, n) = [re | im] @ inverse, dropping the
    imaginary parts of the DC and (for even n) Nyquist bins as torch.fft.irfft does.
    """
    bins = n // 2 + 1
    angle = 2 * math.pi * torch.outer(torch.arange(n, dtype=torch.float64), torch.arange(bins, dtype=torch.float64)) / n
    cos, sin = torch.cos(angle), torch.sin(angle)  # (n, bins)
    weight = torch.full((bins,), 2.0, dtype=torch.float64)
    weight[0] = 1.0
    if n % 2 == 0:
        weight[-1] = 1.0
    # For X = R - i I: irfft(X)[t] = sum_k w_k (R_k cos - (-I_k) sin) / n, so both inverse halves carry a plus sign.
    inverse = torch.cat([(cos * weight / n).T, (sin * weight / n).T], dim=0)
    return torch.cat([cos, sin], dim=1), inverse


def normalise_bilinear(x: torch.Tensor) -> torch.Tensor:
    """(B, D) -> signed square root, then L2 normalisation per row."""
    return F.normalize(signed_sqrt(x), dim=1)
