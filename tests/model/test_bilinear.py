"""Compact bilinear pooling against its oracle, exact bilinear pooling."""

from __future__ import annotations

import pytest
import torch

from model.bilinear import CompactBilinearPooling, exact_bilinear_pool, normalise_bilinear, signed_sqrt


def test_exact_bilinear_is_the_location_average_of_outer_products() -> None:
    torch.manual_seed(0)
    a, p = torch.randn(2, 3, 4, 2), torch.randn(2, 5, 4, 2)
    pooled = exact_bilinear_pool(a, p)
    assert pooled.shape == (2, 15)
    manual = sum(torch.outer(a[1, :, y, x], p[1, :, y, x]) for y in range(4) for x in range(2)) / 8
    torch.testing.assert_close(pooled[1], manual.flatten())


def test_sketch_inner_products_approximate_exact_bilinear_ones() -> None:
    """<TS(f), TS(g)> is an unbiased estimate of <f, g>; with D >> C_a*C_p the error is small."""
    torch.manual_seed(0)
    c_a, c_p, size = 8, 4, (3, 2)
    base_a, base_p = torch.randn(1, c_a, *size), torch.randn(1, c_p, *size)
    # A family of related maps so the inner products span a useful range.
    a = base_a + 0.7 * torch.randn(6, c_a, *size)
    p = base_p + 0.7 * torch.randn(6, c_p, *size)
    exact = exact_bilinear_pool(a, p)
    exact_gram = exact @ exact.T
    errors = []
    for seed in range(8):
        sketch = CompactBilinearPooling(c_a, c_p, output_dim=4096, seed=seed)(a, p)
        assert sketch.shape == (6, 4096)
        errors.append((sketch @ sketch.T - exact_gram).abs().max() / exact_gram.abs().max())
    assert max(errors) < 0.25, errors
    # averaged over independent sketches the estimate converges towards the exact Gram matrix
    mean_sketch_gram = sum(
        (lambda s: s @ s.T)(CompactBilinearPooling(c_a, c_p, output_dim=4096, seed=seed)(a, p)) for seed in range(8)
    ) / 8
    assert (mean_sketch_gram - exact_gram).abs().max() / exact_gram.abs().max() < 0.1


def test_sketch_of_a_single_location_matches_circular_convolution_of_count_sketches() -> None:
    torch.manual_seed(0)
    pool = CompactBilinearPooling(5, 3, output_dim=16, seed=3)
    a, p = torch.randn(1, 5, 1, 1), torch.randn(1, 3, 1, 1)
    ya = torch.zeros(16).index_add_(0, pool.sketch_appearance.index, a.flatten() * pool.sketch_appearance.sign)
    yp = torch.zeros(16).index_add_(0, pool.sketch_parts.index, p.flatten() * pool.sketch_parts.sign)
    circular = torch.stack([sum(ya[j] * yp[(k - j) % 16] for j in range(16)) for k in range(16)])
    torch.testing.assert_close(pool(a, p)[0], circular, atol=1e-5, rtol=1e-5)


def test_signed_sqrt_and_normalisation() -> None:
    x = torch.tensor([[4.0, -9.0, 0.0]])
    torch.testing.assert_close(signed_sqrt(x, eps=0.0), torch.tensor([[2.0, -3.0, 0.0]]))
    out = normalise_bilinear(x)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(1))
    x.requires_grad_(True)
    normalise_bilinear(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_mismatched_maps_are_rejected() -> None:
    with pytest.raises(ValueError):
        CompactBilinearPooling(4, 4, 8)(torch.randn(1, 4, 2, 2), torch.randn(1, 4, 3, 2))


@pytest.mark.parametrize("output_dim", [7, 8, 64])
def test_matmul_spectral_modes_equal_the_fft(output_dim: int) -> None:
    """The DFT-as-matmul forms ONNX export uses compute the same circular convolution as torch.fft."""
    torch.manual_seed(0)
    pooling = CompactBilinearPooling(12, 5, output_dim, seed=3)
    a, p = torch.randn(3, 12, 4, 2), torch.randn(3, 5, 4, 2)
    reference = pooling(a, p)
    keys = set(pooling.state_dict())
    for mode in ("dft_matmul", "folded_matmul"):
        pooling.set_spectral(mode)
        torch.testing.assert_close(pooling(a, p), reference, rtol=1e-5, atol=1e-5)
    pooling.set_spectral("fft")
    assert set(pooling.state_dict()) == keys  # the matmul matrices never reach a checkpoint
    with pytest.raises(ValueError, match="spectral must be one of"):
        pooling.set_spectral("winograd")
