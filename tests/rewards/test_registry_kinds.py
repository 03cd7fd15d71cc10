"""load_reward kinds beyond the as-saved / stripped ones: normalized, shaped, std_added,
zero, and imitation's registry names; all through real saved files."""

import pytest
import torch

from tdimitation.envs import make_env
from tdimitation.rewards import (
    REWARD_KINDS,
    AddStdRewardWrapper,
    MLPRewardNet,
    NormalizedRewardNet,
    RewardEnsemble,
    RewardNetError,
    ShapedRewardNet,
    ZeroRewardNet,
    load_reward,
    save_reward,
)


@pytest.fixture(scope="module")
def cartpole():
    env = make_env("CartPole-v1", num_envs=2, seed=0)
    return env, env.rollout(15, break_when_any_done=False)


def _args(td):
    return td["observation"], td["action"], td["next", "observation"], td["next", "done"]


def _fill_statistics(net, td):
    net.predict_processed(*_args(td))  # moves normalisers away from (0, 1)


def test_normalized_and_shaped_kinds_keep_the_net_or_refuse(cartpole, tmp_path):
    env, td = cartpole
    net = NormalizedRewardNet(ShapedRewardNet.from_env(env))
    _fill_statistics(net, td)
    path = save_reward(net, tmp_path / "norm.pt")
    for kind in ("normalized", "RewardNet_normalized", "shaped", "RewardNet_shaped"):
        loaded = load_reward(kind, path)
        assert type(loaded) is NormalizedRewardNet, kind
        assert torch.equal(
            loaded.predict_processed(*_args(td), update_stats=False),
            net.eval().predict_processed(*_args(td), update_stats=False),
        )
    plain = save_reward(MLPRewardNet.from_env(env), tmp_path / "plain.pt")
    with pytest.raises(RewardNetError, match="needs a net saved with a NormalizedRewardNet"):
        load_reward("normalized", plain)
    with pytest.raises(RewardNetError, match="needs a net saved with a ShapedRewardNet"):
        load_reward("shaped", plain)
    # imitation's names for the stripping kinds behave as ours.
    unshaped = load_reward("RewardNet_unshaped", path)
    assert isinstance(unshaped.base, MLPRewardNet)
    assert isinstance(load_reward("RewardNet_unnormalized", path), ShapedRewardNet)


def test_std_added_is_mean_plus_alpha_std_of_members(cartpole, tmp_path):
    env, td = cartpole
    members = [MLPRewardNet.from_env(env, hidden_sizes=(8,)) for _ in range(3)]
    path = save_reward(RewardEnsemble(members), tmp_path / "ensemble.pt")
    args = _args(td)
    with torch.no_grad():
        values = torch.stack([m.eval().reward(*args) for m in members])  # [3, 2, 15]
    n = values.shape[0]
    mean = values.sum(0) / n
    std = ((values - mean).pow(2).sum(0) / (n - 1)).sqrt()  # unbiased, over members
    assert std.min() > 0  # the members disagree: the alpha term is visible
    loaded = load_reward("std_added", path, alpha=0.7)
    assert isinstance(loaded, AddStdRewardWrapper) and not loaded.training
    assert torch.allclose(loaded.predict_processed(*args), mean + 0.7 * std, atol=1e-6)
    # imitation's default alpha is 0: the ensemble mean.
    default = load_reward("RewardNet_std_added", path)
    assert torch.allclose(default.predict_processed(*args), mean, atol=1e-6)
    # A saved wrapper keeps its alpha unless one is given.
    wrapped = save_reward(
        AddStdRewardWrapper(RewardEnsemble(members), alpha=-1.5), tmp_path / "w.pt"
    )
    assert load_reward("std_added", wrapped).alpha == -1.5
    assert load_reward("std_added", wrapped, alpha=2.0).alpha == 2.0
    single = save_reward(members[0], tmp_path / "single.pt")
    with pytest.raises(RewardNetError, match="needs a saved RewardEnsemble.*MLPRewardNet"):
        load_reward("std_added", single)


def test_zero_kind_for_an_env_or_a_saved_net(cartpole, tmp_path):
    env, td = cartpole
    zero = load_reward("zero", None, env=env)
    assert isinstance(zero, ZeroRewardNet)
    out = zero(td.clone())["learned_reward"]
    assert out.shape == (2, 15, 1) and not out.any()
    lake = make_env("FrozenLake-v1", num_envs=2, seed=0)
    lake_td = lake.rollout(4, break_when_any_done=False)
    lake_zero = load_reward("zero", None, env=lake)
    assert lake_zero.num_states == 16
    assert torch.equal(lake_zero.reward(*_args(lake_td)), torch.zeros(2, 4))
    # From a file: the saved net's spaces.
    path = save_reward(MLPRewardNet.from_env(env), tmp_path / "r.pt")
    from_file = load_reward("zero", path)
    assert (from_file.observation_shape, from_file.action_dim) == ((4,), 2)
    assert torch.equal(from_file.reward(*_args(td)), torch.zeros(2, 15))
    # A zero reward saves and loads like any net.
    again = load_reward("tdimitation", save_reward(zero, tmp_path / "zero.pt"))
    assert isinstance(again, ZeroRewardNet) and again.config == zero.config
    with pytest.raises(RewardNetError, match="'zero' needs the env"):
        load_reward("zero", None)


def test_kind_options_are_checked(cartpole, tmp_path):
    env, _ = cartpole
    path = save_reward(MLPRewardNet.from_env(env), tmp_path / "r.pt")
    with pytest.raises(RewardNetError, match=r"'raw' does not take the options \['alpha'\]"):
        load_reward("raw", path, alpha=1.0)
    with pytest.raises(RewardNetError, match="loads a reward file: pass its path"):
        load_reward("unshaped", None)
    for name in ("normalized", "shaped", "std_added", "zero", "RewardNet_std_added"):
        assert name in REWARD_KINDS
