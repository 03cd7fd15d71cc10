import pytest
import torch
from tensordict import TensorDict
from torchrl.envs import StepCounter, TransformedEnv

from tdimitation.envs import make_env
from tdimitation.errors import SpaceMismatchError
from tdimitation.rewards import (
    CNNPotential,
    CNNRewardNet,
    MLPPotential,
    MLPRewardNet,
    NormalizedRewardNet,
    RewardNetError,
    ShapedRewardNet,
)
from tests.conftest import DictObsEnv
from tests.rewards._helpers import SMALL_CNN, ConstantPotential, ConstantRewardNet, ImageEnv


@pytest.fixture(scope="module")
def cartpole_batch():
    env = make_env("CartPole-v1", num_envs=4, seed=0)
    td = env.rollout(30, break_when_any_done=False)
    return env, td


@pytest.fixture(scope="module")
def pendulum_batch():
    env = make_env("Pendulum-v1", num_envs=3, seed=0)
    return env, env.rollout(6, break_when_any_done=False)


def _args(td):
    return td["observation"], td["action"], td["next", "observation"], td["next", "done"]


def test_mlp_from_env_reads_specs_and_keys(cartpole_batch, pendulum_batch):
    env, _ = cartpole_batch
    net = MLPRewardNet.from_env(env)
    assert (net.observation_shape, net.action_dim, net.discrete_actions) == ((4,), 2, True)
    assert net.in_keys == ["observation", "action"]
    assert net.out_keys == ["learned_reward"]
    full = MLPRewardNet.from_env(env, use_next_state=True, use_done=True)
    assert full.in_keys == ["observation", "action", ("next", "observation"), ("next", "done")]
    cont = MLPRewardNet.from_env(pendulum_batch[0])
    assert (cont.observation_shape, cont.action_dim, cont.discrete_actions) == ((3,), 1, False)
    assert cont.config["hidden_sizes"] == [32, 32] and cont.config["activation"] == "relu"


def test_mlp_reward_any_batch_shape_and_gradients(cartpole_batch):
    env, td = cartpole_batch
    net = MLPRewardNet.from_env(env, use_next_state=True, use_done=True)
    obs, act, nxt, done = _args(td)
    r = net.reward(obs, act, nxt, done)  # batch [4, 30]
    assert r.shape == (4, 30) and r.requires_grad
    flat = net.reward(obs.reshape(-1, 4), act.reshape(-1), nxt.reshape(-1, 4), done.reshape(-1))
    assert torch.allclose(flat, r.reshape(-1), atol=1e-6)
    # done may be float and [B, 1]; actions may be [B, 1] or one-hot.
    alt = net.reward(
        obs.reshape(-1, 4),
        torch.nn.functional.one_hot(act.reshape(-1), 2).float(),
        nxt.reshape(-1, 4),
        done.reshape(-1, 1).float(),
    )
    assert torch.allclose(alt, flat, atol=1e-6)
    assert torch.allclose(net.reward(obs, act.unsqueeze(-1), nxt, done), r, atol=1e-6)
    r.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_predict_processed_and_forward(cartpole_batch):
    env, td = cartpole_batch
    net = MLPRewardNet.from_env(env)
    obs, act, _, _ = _args(td)
    pred = net.predict_processed(obs, act, None, None)
    assert not pred.requires_grad and pred.shape == (4, 30)
    assert torch.allclose(pred, net.reward(obs, act, None, None).detach())
    out = net(td.clone())
    assert out["learned_reward"].shape == (4, 30, 1)
    assert torch.allclose(out["learned_reward"][..., 0], pred)
    # The out key is renamable, by constructor or set_keys.
    other = MLPRewardNet.from_env(env, out_key=("next", "learned"))
    other.load_state_dict(net.state_dict())
    assert other.out_keys == [("next", "learned")]
    assert torch.allclose(other(td.clone())["next", "learned"][..., 0], pred)
    net.set_keys(learned_reward="r", observation="obs")
    renamed = net(TensorDict({"obs": obs, "action": act}, batch_size=[4, 30]))
    assert torch.allclose(renamed["r"][..., 0], pred)
    with pytest.raises(RewardNetError, match="unknown reward net key name"):
        net.set_keys(reward="x")


def test_dropout_and_input_normalisation_only_in_training(cartpole_batch):
    env, td = cartpole_batch
    torch.manual_seed(0)
    net = MLPRewardNet.from_env(env, dropout=0.5, normalize_input=True)
    obs, act, _, _ = _args(td)
    # predict_processed is deterministic and does not touch the input statistics.
    a = net.predict_processed(obs, act, None, None)
    b = net.predict_processed(obs, act, None, None)
    assert torch.equal(a, b) and net.input_norm.count.item() == 0
    assert net.training and all(m.training for m in net.modules())  # mode restored
    net.reward(obs, act, None, None)
    assert net.input_norm.count.item() == 120
    assert not torch.equal(net.reward(obs, act, None, None), net.reward(obs, act, None, None))
    assert net.input_norm.count.item() == 360
    net.eval()
    net.reward(obs, act, None, None)
    assert net.input_norm.count.item() == 360
    # The statistics are those of the concatenated input (obs, one-hot action).
    x = torch.cat([obs.reshape(-1, 4), torch.nn.functional.one_hot(act.reshape(-1), 2)], -1)
    assert torch.allclose(net.input_norm.mean.float(), x.mean(0), atol=1e-5)


def test_from_env_on_transformed_env_and_unsupported_spaces(cartpole_batch):
    env, _ = cartpole_batch
    transformed = TransformedEnv(make_env("CartPole-v1", num_envs=2), StepCounter())
    net = MLPRewardNet.from_env(transformed)
    assert (net.observation_shape, net.action_dim, net.discrete_actions) == ((4,), 2, True)
    with pytest.raises(SpaceMismatchError, match="dict observations"):
        MLPRewardNet.from_env(make_env(DictObsEnv, num_envs=2))


def test_mlp_input_errors(cartpole_batch):
    env, td = cartpole_batch
    with pytest.raises(RewardNetError, match="uses no input"):
        MLPRewardNet.from_env(env, use_state=False, use_action=False)
    net = MLPRewardNet.from_env(env)
    obs, act, _, _ = _args(td)
    with pytest.raises(RewardNetError, match="uses the action but got None"):
        net.reward(obs, None, None, None)
    with pytest.raises(SpaceMismatchError, match="another environment"):
        net.reward(torch.zeros(5, 3), act[0, :5], None, None)
    with pytest.raises(SpaceMismatchError, match="discrete actions of shape"):
        net.reward(obs, act[..., :3], None, None)
    with pytest.raises(RewardNetError, match="unknown activation"):
        MLPRewardNet.from_env(env, activation="nope")


def test_cnn_reward_net_on_images():
    env = make_env(lambda: ImageEnv(12), num_envs=2, seed=0)
    net = CNNRewardNet.from_env(env, use_next_state=True, use_done=True, **SMALL_CNN)
    assert net.hwc_format and net.observation_shape == (12, 12, 3)
    td = env.rollout(6, break_when_any_done=False)
    assert td["observation"].dtype == torch.uint8
    r = net.reward(*_args(td))
    assert r.shape == (2, 6) and r.requires_grad
    # uint8 pixels are scaled to [0, 1]: the same images as floats in [0, 1] agree.
    scaled = net.reward(
        td["observation"].float() / 255,
        td["action"],
        td["next", "observation"].float() / 255,
        td["next", "done"],
    )
    assert torch.allclose(r, scaled, atol=1e-5)
    # Channels-first images are accepted with hwc_format=False.
    chw = CNNRewardNet((3, 12, 12), 3, True, hwc_format=False, **SMALL_CNN)
    chw.load_state_dict(CNNRewardNet((12, 12, 3), 3, True, **SMALL_CNN).state_dict())
    assert chw.reward(td["observation"].permute(0, 1, 4, 2, 3), td["action"], None, None).shape == (
        2,
        6,
    )
    assert net(td.clone())["learned_reward"].shape == (2, 6, 1)


def test_cnn_errors():
    with pytest.raises(SpaceMismatchError, match="need image observations"):
        CNNRewardNet((4,), 2, True)
    with pytest.raises(RewardNetError, match="needs an image"):
        CNNRewardNet((12, 12, 3), 2, True, use_state=False, **SMALL_CNN)
    with pytest.raises(ValueError, match="too small"):
        CNNRewardNet((12, 12, 3), 2, True)  # Nature-DQN kernels need >= 36x36 images


def test_shaping_with_constant_potential_is_exact(cartpole_batch):
    _, td = cartpole_batch
    shaped = ShapedRewardNet(ConstantRewardNet(0.0), ConstantPotential(10.0), discount=0.9)
    obs = td["observation"][0, :4]
    done = torch.tensor([False, True, False, True])
    r = shaped.reward(obs, None, obs, done)
    # 0 + 0.9 * 10 * (1 - done) - 10
    assert torch.allclose(r, torch.tensor([-1.0, -10.0, -1.0, -10.0]))
    assert torch.allclose(shaped.reward(obs, None, obs, done.float().unsqueeze(-1)), r)
    assert torch.allclose(shaped.predict_processed(obs, None, obs, done), r)
    assert shaped.base.value == 0.0


def test_shaped_net_trains_base_and_potential(cartpole_batch):
    env, td = cartpole_batch
    shaped = ShapedRewardNet.from_env(env, discount=0.95)
    assert isinstance(shaped.base, MLPRewardNet) and isinstance(shaped.potential, MLPPotential)
    assert shaped.in_keys == ["observation", "action", ("next", "observation"), ("next", "done")]
    r = shaped.reward(*_args(td))
    assert r.shape == (4, 30)
    r.sum().backward()
    assert shaped.potential.mlp[0].weight.grad is not None
    assert shaped.base.mlp[0].weight.grad is not None
    # The shaping term is exactly gamma * (1 - done) * phi(s') - phi(s).
    obs, act, nxt, done = _args(td)
    with torch.no_grad():
        expected = (
            shaped.base.reward(obs, act, nxt, done)
            + 0.95 * (~done[..., 0]).float() * shaped.potential(nxt)
            - shaped.potential(obs)
        )
    assert torch.allclose(r.detach(), expected, atol=1e-6)


def test_shaping_choices_and_errors(cartpole_batch):
    env, _ = cartpole_batch
    cnn = CNNRewardNet((12, 12, 3), 3, True, **SMALL_CNN)
    potential = ShapedRewardNet(cnn).potential  # a CNN potential with the base's layers
    assert isinstance(potential, CNNPotential)
    assert potential.config["kernel_sizes"] == [4, 3] and potential.config["hwc_format"]
    assert potential(torch.zeros(2, 5, 12, 12, 3, dtype=torch.uint8)).shape == (2, 5)
    with pytest.raises(RewardNetError, match="shaping applies to the raw reward"):
        ShapedRewardNet(NormalizedRewardNet(MLPRewardNet.from_env(env)))
    with pytest.raises(RewardNetError, match="discount must be in"):
        ShapedRewardNet(MLPRewardNet.from_env(env), discount=1.5)
    with pytest.raises(RewardNetError, match="wraps a RewardNet"):
        ShapedRewardNet(torch.nn.Linear(4, 1))


def test_shaped_net_respects_renamed_done_key(cartpole_batch):
    env, td = cartpole_batch
    base = MLPRewardNet.from_env(env).set_keys(done=("next", "terminated"))
    shaped = ShapedRewardNet(base, ConstantPotential(1.0), discount=0.5)
    assert ("next", "terminated") in shaped.in_keys
    batch = td.clone()
    batch["next", "done"] = torch.ones_like(batch["next", "done"])
    batch["next", "terminated"] = torch.zeros_like(batch["next", "terminated"])
    out = shaped(batch)["learned_reward"][..., 0]
    obs, act, _, _ = _args(td)
    assert torch.allclose(out, base.predict_processed(obs, act, None, None) - 0.5)
