"""Flow-matching sampler: timesteps, quantised sigma lookup, Euler step, guidance."""

import pytest
import torch

from avatarforcing.engine.sampler import FlowMatchingEulerSampler, combine_guidance, lookup_sigma

# the official sigma grid (float32 values)
SIGMA_TABLES = {
    10: [1.0, 0.87487489, 0.74974978, 0.62462461, 0.50050050, 0.37537536, 0.25025025, 0.12512513, 0.0],
    6: [1.0, 0.74974978, 0.50050050, 0.25025025, 0.0],
    4: [1.0, 0.50050050, 0.0],
    8: [1.0, 0.83383381, 0.66666669, 0.50050050, 0.33333334, 0.16716717, 0.0],
    12: [
        1.0,
        0.89989990,
        0.79979980,
        0.69969970,
        0.59959960,
        0.50050050,
        0.40040040,
        0.30030030,
        0.20020020,
        0.10010010,
        0.0,
    ],
}


@pytest.mark.parametrize("nfe", sorted(SIGMA_TABLES))
def test_sigma_lookup_matches_official_tables(nfe):
    sampler = FlowMatchingEulerSampler(nfe)
    assert len(sampler.timesteps) == nfe - 1
    assert sampler.timesteps[0] == 1000 and sampler.timesteps[-1] == 0
    assert sampler.sigmas == pytest.approx(SIGMA_TABLES[nfe], abs=1e-7)
    assert len(sampler.evaluation_timesteps) == nfe - 2  # the t = 0 evaluation is dropped


def test_tie_at_500_resolves_to_the_higher_sigma():
    assert lookup_sigma(500.0) == pytest.approx(0.5005005, abs=1e-7)
    assert lookup_sigma(0.0) == 0.0


def test_euler_step_ends_at_the_clean_estimate():
    sampler = FlowMatchingEulerSampler(10)
    x0, eps = torch.randn(1, 5, 8), torch.randn(1, 5, 8)
    x = eps.clone()  # sigma = 1
    for i in range(len(sampler.evaluation_timesteps)):
        x = sampler.step(x, eps - x0, i)  # the exact velocity of the straight path
    torch.testing.assert_close(x, x0, atol=1e-5, rtol=0)


def test_guidance_combination_order():
    v3 = torch.stack([torch.full((1, 2, 3), v) for v in (1.0, 3.0, 7.0)])[:, 0]
    out = combine_guidance(v3, torch.tensor([2.0, 0.5]))
    torch.testing.assert_close(out, torch.full((1, 2, 3), 1.0 + 2.0 * 2.0 + 0.5 * 6.0))


def test_nfe_too_small_is_rejected():
    with pytest.raises(ValueError, match="nfe"):
        FlowMatchingEulerSampler(2)
