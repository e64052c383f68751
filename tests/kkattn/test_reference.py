"""The oracle itself: an independent loop-built G, the softmax formula, and gradcheck in float64."""
import math

import pytest
import torch

import kkattn
from kkattn import reference


def naive_prior(h, w, sigma, num_prefix_tokens=0):
    """G from the paper's formula, one entry at a time."""
    n = h * w + num_prefix_tokens
    g = torch.zeros(n, n, dtype=torch.float64)
    for i in range(num_prefix_tokens, n):
        for j in range(num_prefix_tokens, n):
            ri, ci = divmod(i - num_prefix_tokens, w)
            rj, cj = divmod(j - num_prefix_tokens, w)
            g[i, j] = math.exp(-((ri - rj) ** 2 + (ci - cj) ** 2) / (2 * sigma ** 2))
    return g


@pytest.mark.parametrize("grid,prefix,sigma", [((4, 4), 0, 2.0), ((3, 5), 1, 0.7), ((1, 6), 2, 3.0)])
def test_gaussian_prior_matches_formula(grid, prefix, sigma):
    g = kkattn.gaussian_prior(grid, sigma, prefix, dtype=torch.float64)
    want = naive_prior(*grid, sigma, prefix)
    torch.testing.assert_close(g, want, rtol=1e-14, atol=1e-15)
    assert torch.equal(g, g.T)
    assert torch.all(g[prefix:, prefix:].diagonal() == 1.0)
    assert torch.all(g[:prefix] == 0) and torch.all(g[:, :prefix] == 0)


def test_gaussian_prior_per_head_is_differentiable():
    sigma = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    g = kkattn.gaussian_prior((3, 4), sigma)
    assert g.shape == (3, 12, 12)
    for h in range(3):
        torch.testing.assert_close(g[h].detach(), naive_prior(3, 4, sigma[h].item()))
    assert torch.autograd.gradcheck(lambda s: kkattn.gaussian_prior((3, 4), s), (sigma,))


def test_reference_matches_direct_formula():
    torch.manual_seed(1)
    b, h, grid, d, prefix = 2, 3, (3, 5), 8, 1
    n = grid[0] * grid[1] + prefix
    k = torch.randn(b, h, n, d, dtype=torch.float64)
    v = torch.randn(b, h, n, d, dtype=torch.float64)
    sigma = torch.tensor([0.8, 1.5, 2.5], dtype=torch.float64)
    out, lse = reference.neighborhood_kk_attention(k, v, sigma, grid=grid, num_prefix_tokens=prefix,
                                                   return_lse=True)
    for hh in range(h):
        logits = k[:, hh] @ k[:, hh].transpose(-1, -2) / math.sqrt(d) + naive_prior(*grid, sigma[hh].item(), prefix)
        torch.testing.assert_close(out[:, hh], torch.softmax(logits, -1) @ v[:, hh], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(lse[:, hh], torch.logsumexp(logits, -1), rtol=1e-12, atol=1e-12)


def test_reference_without_prior_is_plain_kk_attention():
    k = torch.randn(1, 2, 9, 4, dtype=torch.float64)
    v = torch.randn(1, 2, 9, 4, dtype=torch.float64)
    want = torch.nn.functional.scaled_dot_product_attention(k, k, v)
    torch.testing.assert_close(reference.neighborhood_kk_attention(k, v, None), want)


def test_reference_gradcheck_float64():
    torch.manual_seed(2)
    k = torch.randn(1, 2, 7, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 7, 3, dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor([0.9, 1.7], dtype=torch.float64, requires_grad=True)
    fn = lambda k_, v_, s_: reference.neighborhood_kk_attention(k_, v_, s_, grid=(2, 3), num_prefix_tokens=1)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (k, v, sigma))
    assert torch.autograd.gradgradcheck(fn, (k, v, sigma))
