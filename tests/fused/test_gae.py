"""The one GAE: equal to torchrl's ``generalized_advantage_estimate``, bit for bit."""

import pytest
import torch
from torchrl.objectives.value.functional import generalized_advantage_estimate

from tdimitation.fused import gae


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shape", [(8, 64, 1), (1, 5, 1), (3, 200, 2)])
def test_gae_equals_torchrl(seed, shape):
    g = torch.Generator().manual_seed(seed)
    value = torch.randn(shape, generator=g)
    next_value = torch.randn(shape, generator=g)
    reward = torch.randn(shape, generator=g) * 3
    # Episode ends of both kinds: terminations (no bootstrap) and truncations (bootstrap).
    terminated = torch.rand(shape, generator=g) < 0.05
    truncated = (torch.rand(shape, generator=g) < 0.05) & ~terminated
    done = terminated | truncated
    assert terminated.any() and truncated.any() or shape[1] < 10
    expected = generalized_advantage_estimate(
        0.99, 0.95, value, next_value, reward, done, terminated
    )
    got = gae(0.99, 0.95, value, next_value, reward, done, terminated)
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)


def test_gae_cuts_the_recursion_at_episode_ends():
    """A done step's advantage does not see the next episode; a truncation still bootstraps."""
    value = torch.zeros(1, 3, 1)
    next_value = torch.ones(1, 3, 1)
    reward = torch.tensor([[[1.0], [10.0], [100.0]]])
    terminated = torch.tensor([[[False], [True], [False]]])
    done = torch.tensor([[[False], [True], [True]]])  # step 2 is a truncation
    advantage, target = gae(0.5, 1.0, value, next_value, reward, done, terminated)
    # Step 1 terminates: no bootstrap. Step 2 truncates: bootstrap from next_value.
    assert advantage[0, :, 0].tolist() == [1.5 + 0.5 * 10.0, 10.0, 100.5]
    assert torch.equal(target, advantage + value)
