import pytest
import torch

from tdimitation.envs import make_env
from tdimitation.rewards import (
    AddStdRewardWrapper,
    MLPRewardNet,
    NormalizedRewardNet,
    RewardEnsemble,
    RewardNetError,
    ShapedRewardNet,
    strip_wrappers,
)
from tests.rewards._helpers import ConstantRewardNet


@pytest.fixture(scope="module")
def cartpole_batch():
    env = make_env("CartPole-v1", num_envs=4, seed=0)
    return env, env.rollout(25, break_when_any_done=False)


def _args(td):
    return td["observation"], td["action"], td["next", "observation"], td["next", "done"]


def test_normalized_reward_standardises_processed_output_only(cartpole_batch):
    env, td = cartpole_batch
    base = MLPRewardNet.from_env(env)
    net = NormalizedRewardNet(base)
    args = _args(td)
    raw = base.predict_processed(*args)
    # reward() is the raw, differentiable base reward.
    r = net.reward(*args)
    assert r.requires_grad and torch.allclose(r.detach(), raw)
    out = net.predict_processed(*args)
    # After one update the statistics are exactly those of this batch.
    expected = (raw - raw.mean()) / raw.var(correction=0).add(1e-8).sqrt()
    assert torch.allclose(out, expected, atol=1e-5)
    assert net.normalizer.count.item() == 100
    frozen = net.predict_processed(*args, update_stats=False)
    assert net.normalizer.count.item() == 100 and torch.allclose(frozen, out, atol=1e-5)
    # forward updates statistics in training mode only.
    net(td.clone())
    assert net.normalizer.count.item() == 200
    net.eval()
    net(td.clone())
    assert net.normalizer.count.item() == 200
    assert net.in_keys == base.in_keys and net.base is base


def test_normalized_ema_and_errors(cartpole_batch):
    env, td = cartpole_batch
    net = NormalizedRewardNet(ConstantRewardNet(3.0), normalizer="ema", ema_decay=0.5)
    obs = td["observation"]
    net.predict_processed(obs, None, None, None)
    net.base.value = 5.0
    out = net.predict_processed(obs, None, None, None)
    # Per-batch EMA: the batches of 3s and 5s weigh 0.5 : 1, i.e. 1/3 and 2/3. Mean 13/3;
    # variance of that two-point mixture (1/3)(2/3)(5 - 3)^2 = 8/9; (5 - 13/3) / sqrt(8/9).
    assert net.normalizer.mean.item() == pytest.approx(13 / 3)
    assert net.normalizer.var.item() == pytest.approx(8 / 9)
    assert torch.allclose(out, torch.full((4, 25), 0.5**0.5), atol=1e-6)
    with pytest.raises(RewardNetError, match="unknown reward normalizer 'batch'"):
        NormalizedRewardNet(MLPRewardNet.from_env(env), normalizer="batch")


def test_ensemble_mean_and_variance_of_constant_members(cartpole_batch):
    _, td = cartpole_batch
    ens = RewardEnsemble([ConstantRewardNet(3.0), ConstantRewardNet(-1.0)])
    obs = td["observation"]
    mean, var = ens.mean_and_variance(obs, None, None, None)
    assert torch.allclose(mean, torch.ones(4, 25)) and torch.allclose(var, torch.full((4, 25), 8.0))
    assert torch.allclose(ens.predict_processed(obs, None, None, None), torch.ones(4, 25))
    members = ens.members_reward(obs, None, None, None)
    assert members.shape == (2, 4, 25)
    # Training members: gradients reach every member through members_reward and reward.
    members.sum().backward()
    assert all(m.offset.grad.item() == 100 for m in ens.members)
    assert ens.reward(obs, None, None, None).requires_grad
    wrapped = AddStdRewardWrapper(ens, alpha=0.1)
    assert torch.allclose(
        wrapped.predict_processed(obs, None, None, None), torch.full((4, 25), 1.2828427)
    )
    assert torch.allclose(
        wrapped.predict_processed(obs, None, None, None, alpha=-1.0),
        torch.full((4, 25), 1 - 8**0.5),
    )
    assert torch.allclose(wrapped(td.clone())["learned_reward"], torch.full((4, 25, 1), 1.2828427))
    assert wrapped.base is ens and ens.num_members == 2


def test_ensemble_and_std_errors(cartpole_batch):
    env, _ = cartpole_batch
    with pytest.raises(RewardNetError, match="at least 2 members, got 1"):
        RewardEnsemble([ConstantRewardNet(1.0)])
    with pytest.raises(RewardNetError, match="members must share the spaces"):
        RewardEnsemble([ConstantRewardNet(1.0), ConstantRewardNet(1.0, observation_shape=(3,))])
    with pytest.raises(RewardNetError, match="needs a RewardEnsemble"):
        AddStdRewardWrapper(MLPRewardNet.from_env(env), alpha=1.0)


def test_ensemble_of_real_nets_uses_union_of_inputs(cartpole_batch):
    env, td = cartpole_batch
    ens = RewardEnsemble(
        [MLPRewardNet.from_env(env), MLPRewardNet.from_env(env, use_next_state=True)]
    )
    assert ens.in_keys == ["observation", "action", ("next", "observation")]
    args = _args(td)
    values = torch.stack([m.predict_processed(*args) for m in ens.members])
    mean, var = ens.mean_and_variance(*args)
    assert torch.allclose(mean, values.mean(0)) and torch.allclose(var, values.var(0))


def test_wrappers_compose_and_strip_without_mutation(cartpole_batch):
    env, td = cartpole_batch
    mlp = MLPRewardNet.from_env(env)
    shaped = ShapedRewardNet(mlp)
    net = NormalizedRewardNet(shaped)
    args = _args(td)
    assert torch.allclose(net.reward(*args), shaped.reward(*args))
    net.predict_processed(*args)
    unshaped = strip_wrappers(net, ShapedRewardNet)
    assert isinstance(unshaped, NormalizedRewardNet) and unshaped.base is mlp
    assert unshaped.normalizer is net.normalizer  # shares statistics with the live net
    assert net.base is shaped  # the original is untouched
    assert ("next", "observation") in net.in_keys
    assert unshaped.in_keys == ["observation", "action"]
    assert strip_wrappers(net, ShapedRewardNet, NormalizedRewardNet) is mlp
    assert strip_wrappers(mlp, ShapedRewardNet) is mlp
    ens = AddStdRewardWrapper(RewardEnsemble([NormalizedRewardNet(mlp), mlp]), 1.0)
    stripped = strip_wrappers(ens, NormalizedRewardNet)
    assert all(m is mlp for m in stripped.base.members)
    assert isinstance(ens.base.members[0], NormalizedRewardNet)
