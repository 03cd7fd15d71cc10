"""Discrete observations (FrozenLake), input normalisation choices, shaped-net defaults."""

import pytest
import torch
import torch.nn.functional as F

from tdimitation.envs import make_env
from tdimitation.errors import SpaceMismatchError
from tdimitation.nn import EMANorm, RunningNorm
from tdimitation.rewards import (
    MLPPotential,
    MLPRewardNet,
    RewardEnsemble,
    RewardFileError,
    RewardNetError,
    ShapedRewardNet,
    load_reward,
    num_states_from_env,
    save_reward,
)


@pytest.fixture(scope="module")
def frozen_lake():
    env = make_env("FrozenLake-v1", num_envs=3, seed=0)
    return env, env.rollout(12, break_when_any_done=False)


@pytest.fixture(scope="module")
def cartpole():
    env = make_env("CartPole-v1", num_envs=2, seed=0)
    return env, env.rollout(10, break_when_any_done=False)


def _args(td):
    return td["observation"], td["action"], td["next", "observation"], td["next", "done"]


def _by_hand(mlp, *features):
    """The MLP on concatenated features, layer by layer (independent of mlp_forward)."""
    x = torch.cat(features, -1)
    for layer in mlp:
        x = layer(x)
    return x.squeeze(-1)


def test_frozen_lake_observations_are_one_hot(frozen_lake):
    env, td = frozen_lake
    assert num_states_from_env(env) == 16
    assert td["observation"].dtype == torch.int64 and td["observation"].shape == (3, 12)
    net = MLPRewardNet.from_env(env)
    assert (net.observation_shape, net.num_states, net.action_dim) == ((), 16, 4)
    assert net.mlp[0].in_features == 16 + 4
    full = MLPRewardNet.from_env(env, use_next_state=True, use_done=True)
    assert full.mlp[0].in_features == 16 + 4 + 16 + 1
    obs, act, nxt, done = _args(td)
    r = full.reward(obs, act, nxt, done)
    assert r.shape == (3, 12)
    expected = _by_hand(
        full.mlp,
        F.one_hot(obs, 16).float(),
        F.one_hot(act, 4).float(),
        F.one_hot(nxt, 16).float(),
        done.float().reshape(3, 12, 1),
    )
    assert torch.allclose(r, expected, atol=1e-6)
    # One-hot rows (float) are accepted in place of indices, and give the same reward.
    one_hot = full.reward(F.one_hot(obs, 16).float(), act, F.one_hot(nxt, 16).float(), done)
    assert torch.allclose(one_hot, r, atol=1e-6)
    written = net(td.clone())["learned_reward"][..., 0]
    assert torch.allclose(written, net.reward(obs, act, None, None))


def test_frozen_lake_input_errors(frozen_lake):
    env, td = frozen_lake
    net = MLPRewardNet.from_env(env)
    obs, act, _, _ = _args(td)
    with pytest.raises(SpaceMismatchError, match=r"indices in \[0, 16\)"):
        net.reward(obs + 16, act, None, None)
    with pytest.raises(SpaceMismatchError, match="one-hot rows"):
        net.reward(obs.float(), act, None, None)
    with pytest.raises(RewardNetError, match="num_states=16 describes a discrete observation"):
        MLPRewardNet((4,), 2, True, num_states=16)


def test_frozen_lake_shaped_net_and_round_trip(frozen_lake, tmp_path):
    env, td = frozen_lake
    shaped = ShapedRewardNet.from_env(env, discount=0.9)
    assert shaped.potential.mlp[0].in_features == 16
    assert ShapedRewardNet(MLPRewardNet.from_env(env)).potential.mlp[0].in_features == 16
    obs, act, nxt, done = _args(td)
    with torch.no_grad():
        phi = _by_hand(shaped.potential.mlp, F.one_hot(obs, 16).float())
        phi_next = _by_hand(shaped.potential.mlp, F.one_hot(nxt, 16).float())
        base = shaped.base.reward(obs, act, nxt, done)
        expected = base + 0.9 * (1 - done[..., 0].float()) * phi_next - phi
        assert torch.allclose(shaped.reward(obs, act, nxt, done), expected, atol=1e-6)
    loaded = load_reward("tdimitation", save_reward(shaped, tmp_path / "lake.pt"))
    assert loaded.num_states == 16 and loaded.base.num_states == 16
    assert torch.equal(loaded.reward(obs, act, nxt, done), shaped.reward(obs, act, nxt, done))
    ensemble = RewardEnsemble([MLPRewardNet.from_env(env) for _ in range(2)])
    assert ensemble.num_states == 16
    with pytest.raises(RewardNetError, match="members must share the spaces"):
        RewardEnsemble([MLPRewardNet.from_env(env), MLPRewardNet((), 4, True)])
    with pytest.raises(RewardNetError, match="describes a discrete observation"):
        MLPPotential((4,), num_states=3)


def test_normalize_input_names_and_booleans(cartpole):
    env, _ = cartpole
    cases = [(True, RunningNorm, "running"), ("running", RunningNorm, "running")]
    cases += [("ema", EMANorm, "ema"), (False, None, None), (None, None, None)]
    for value, norm_type, stored in cases:
        net = MLPRewardNet.from_env(env, normalize_input=value)
        assert net.config["normalize_input"] == stored
        if norm_type is None:
            assert net.input_norm is None
        else:
            assert type(net.input_norm) is norm_type and net.input_norm.mean.shape == (6,)
    with pytest.raises(RewardNetError, match="unknown normalize_input 'batch'"):
        MLPRewardNet.from_env(env, normalize_input="batch")
    # A config saved with the boolean form still builds.
    old = {**MLPRewardNet.from_env(env).config, "normalize_input": True}
    assert isinstance(MLPRewardNet.from_config(old).input_norm, RunningNorm)


def test_ema_input_normalisation_statistics(cartpole):
    env, td = cartpole
    net = MLPRewardNet.from_env(env, normalize_input="ema")
    obs, act, _, _ = _args(td)
    first, second = (obs[0], act[0]), (obs[1], act[1])
    net.reward(*first, None, None)
    net.reward(*second, None, None)
    # Per-batch weights decay = 0.99 (older) and 1 (newer) on the batches' input moments.
    batches = [torch.cat([o, F.one_hot(a, 2).float()], -1).double() for o, a in (first, second)]
    weights = torch.tensor([0.99, 1.0], dtype=torch.float64) / 1.99
    means = torch.stack([b.mean(0) for b in batches])
    second_moments = torch.stack([b.pow(2).mean(0) for b in batches])
    mean = (weights[:, None] * means).sum(0)
    var = (weights[:, None] * second_moments).sum(0) - mean.pow(2)
    assert torch.allclose(net.input_norm.mean, mean, atol=1e-6)
    assert torch.allclose(net.input_norm.var, var, atol=1e-6)
    assert net.input_norm.num_batches.item() == 2


def test_shaped_defaults_are_imitations(cartpole):
    env, _ = cartpole
    shaped = ShapedRewardNet.from_env(env)
    linear = [m.out_features for m in shaped.base.mlp if isinstance(m, torch.nn.Linear)]
    assert linear == [32, 1]  # base reward hidden sizes (32,)
    assert shaped.potential.config["hidden_sizes"] == [32, 32]
    assert shaped.discount == 0.99
    # Recipes that set hidden sizes keep them (GAIL/AIRL recipes pass [32, 32]).
    recipe = ShapedRewardNet.from_env(env, use_action=False, hidden_sizes=[32, 32])
    assert recipe.base.config["hidden_sizes"] == [32, 32] and not recipe.base.use_action


def test_error_classes_are_value_and_os_errors():
    assert issubclass(RewardNetError, ValueError)
    assert issubclass(RewardFileError, OSError)
