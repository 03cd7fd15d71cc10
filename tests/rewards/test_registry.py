import pytest
import torch

from tdimitation.envs import make_env
from tdimitation.policies import build_actor, save_policy
from tdimitation.rewards import (
    REWARD_KINDS,
    AddStdRewardWrapper,
    CNNRewardNet,
    MLPRewardNet,
    NormalizedRewardNet,
    RewardEnsemble,
    RewardFileError,
    RewardNetError,
    ShapedRewardNet,
    load_reward,
    register_reward_kind,
    reward_payload,
    save_reward,
)
from tests.rewards._helpers import SMALL_CNN, ConstantPotential, ImageEnv


@pytest.fixture(scope="module")
def cartpole():
    env = make_env("CartPole-v1", num_envs=4, seed=0)
    return env, env.rollout(20, break_when_any_done=False)


@pytest.fixture(scope="module")
def pendulum():
    env = make_env("Pendulum-v1", num_envs=2, seed=0)
    return env, env.rollout(10, break_when_any_done=False)


def _args(td):
    return td["observation"], td["action"], td["next", "observation"], td["next", "done"]


def _train_a_little(net, td):
    """Move weights and statistics away from their initial values."""
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    args = _args(td)
    for _ in range(3):
        opt.zero_grad()
        net.reward(*args).pow(2).mean().backward()
        opt.step()
        net.predict_processed(*args)  # updates normalisers


NETS = {
    "mlp": lambda env: MLPRewardNet.from_env(
        env, use_next_state=True, use_done=True, dropout=0.1, normalize_input=True
    ),
    "shaped": lambda env: ShapedRewardNet.from_env(env, discount=0.9, hidden_sizes=(8,)),
    "normalized_shaped": lambda env: NormalizedRewardNet(ShapedRewardNet.from_env(env)),
    "normalized_ema": lambda env: NormalizedRewardNet(
        MLPRewardNet.from_env(env), normalizer="ema", ema_decay=0.9, clip=3.0
    ),
    "ensemble": lambda env: RewardEnsemble(
        [MLPRewardNet.from_env(env), ShapedRewardNet.from_env(env)]
    ),
    "addstd": lambda env: AddStdRewardWrapper(
        RewardEnsemble([NormalizedRewardNet(MLPRewardNet.from_env(env)) for _ in range(3)]),
        alpha=0.5,
    ),
}


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("env_name", ["cartpole", "pendulum"])
def test_round_trip_gives_identical_outputs(name, env_name, tmp_path, request):
    env, td = request.getfixturevalue(env_name)
    net = NETS[name](env)
    _train_a_little(net, td)
    path = save_reward(net, tmp_path / "reward.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reward.pt"]  # no temp files left
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "tdimitation-reward" and payload["class"] == type(net).__name__
    assert payload["observation_shape"] == list(net.observation_shape)
    loaded = load_reward("tdimitation", path)
    assert type(loaded) is type(net) and not loaded.training
    net.eval()
    args = _args(td)
    assert torch.equal(loaded.reward(*args), net.reward(*args))
    assert torch.equal(
        loaded.predict_processed(*args, update_stats=False),
        net.predict_processed(*args, update_stats=False),
    )
    assert loaded.in_keys == net.in_keys
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_cnn_round_trip_and_renamed_keys(tmp_path):
    env = make_env(lambda: ImageEnv(12), num_envs=2, seed=0)
    td = env.rollout(5, break_when_any_done=False)
    net = CNNRewardNet.from_env(env, use_next_state=True, **SMALL_CNN)
    net.set_keys(learned_reward=("next", "learned"), done=("next", "terminated"))
    loaded = load_reward("tdimitation", save_reward(net, tmp_path / "cnn.pt"))
    assert loaded.out_keys == [("next", "learned")]
    assert loaded.config == net.config
    assert torch.equal(loaded.reward(*_args(td)), net.reward(*_args(td)))
    shaped = NormalizedRewardNet(ShapedRewardNet(CNNRewardNet.from_env(env, **SMALL_CNN)))
    _train_a_little(shaped, td)
    loaded = load_reward("tdimitation", save_reward(shaped.eval(), tmp_path / "shaped.pt"))
    assert torch.equal(loaded.predict_processed(*_args(td)), shaped.predict_processed(*_args(td)))


def test_kinds_strip_shaping_and_normalisation(cartpole, tmp_path):
    env, td = cartpole
    net = NormalizedRewardNet(ShapedRewardNet.from_env(env))
    _train_a_little(net, td)
    path = save_reward(net, tmp_path / "r.pt")
    unshaped = load_reward("unshaped", path)
    assert isinstance(unshaped, NormalizedRewardNet) and isinstance(unshaped.base, MLPRewardNet)
    unnormalized = load_reward("unnormalized", path)
    assert isinstance(unnormalized, ShapedRewardNet)
    raw = load_reward("raw", path)
    assert isinstance(raw, MLPRewardNet)
    args = _args(td)
    assert torch.equal(raw.reward(*args), net.base.base.reward(*args))
    assert torch.equal(unnormalized.reward(*args), net.base.reward(*args))
    # Kinds compose with wrappers inside ensembles too.
    ens = RewardEnsemble([NormalizedRewardNet(MLPRewardNet.from_env(env)) for _ in range(2)])
    stripped = load_reward("unnormalized", save_reward(ens, tmp_path / "e.pt"))
    assert all(isinstance(m, MLPRewardNet) for m in stripped.members)


def test_load_to_device_and_from_checkpoint(cartpole, tmp_path):
    env, td = cartpole
    net = MLPRewardNet.from_env(env)
    checkpoint = {"state_dict": {}, "tdimitation": {"reward_net": reward_payload(net)}}
    torch.save(checkpoint, tmp_path / "run.ckpt")
    loaded = load_reward("tdimitation", tmp_path / "run.ckpt", device="cpu")
    assert torch.equal(loaded.reward(*_args(td)), net.reward(*_args(td)))
    assert next(loaded.parameters()).device == torch.device("cpu")


def test_register_reward_kind(cartpole, tmp_path):
    env, td = cartpole

    @register_reward_kind("test-optimistic")
    def _optimistic(path, device):
        return AddStdRewardWrapper(load_reward("tdimitation", path, device), alpha=1.0)

    try:
        ens = RewardEnsemble([MLPRewardNet.from_env(env) for _ in range(2)])
        loaded = load_reward("test-optimistic", save_reward(ens, tmp_path / "e.pt"))
        mean, var = ens.mean_and_variance(*_args(td))
        assert torch.allclose(loaded.predict_processed(*_args(td)), mean + var.sqrt())
    finally:
        del REWARD_KINDS["test-optimistic"]


def test_load_errors(cartpole, tmp_path):
    env, _ = cartpole
    net = MLPRewardNet.from_env(env)
    good = save_reward(net, tmp_path / "good.pt")
    with pytest.raises(RewardFileError, match="does not exist"):
        load_reward("tdimitation", tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(RewardFileError, match="corrupted, truncated"):
        load_reward("tdimitation", truncated)
    policy_file = save_policy(build_actor(env), tmp_path / "policy.pt")
    with pytest.raises(RewardFileError, match="not a tdimitation reward file"):
        load_reward("tdimitation", policy_file)
    with pytest.raises(RewardNetError, match=r"unknown reward kind 'learned'.*'raw'"):
        load_reward("learned", good)
    payload = reward_payload(net)
    torch.save({**payload, "class": "FancyRewardNet"}, tmp_path / "unknown.pt")
    with pytest.raises(RewardNetError, match="unknown reward class 'FancyRewardNet'"):
        load_reward("tdimitation", tmp_path / "unknown.pt")
    bad_weights = {**payload, "config": {**payload["config"], "hidden_sizes": [7]}}
    torch.save(bad_weights, tmp_path / "mismatch.pt")
    with pytest.raises(RewardFileError, match="do not fit the saved configuration"):
        load_reward("tdimitation", tmp_path / "mismatch.pt")
    torch.save({**payload, "version": 99}, tmp_path / "future.pt")
    with pytest.raises(RewardFileError, match="version 99"):
        load_reward("tdimitation", tmp_path / "future.pt")


def test_save_errors_leave_no_file(cartpole, tmp_path):
    env, _ = cartpole
    custom = ShapedRewardNet(MLPRewardNet.from_env(env), ConstantPotential(1.0))
    with pytest.raises(RewardNetError, match="cannot save a ConstantPotential"):
        save_reward(custom, tmp_path / "custom.pt")
    with pytest.raises(RewardNetError, match="saves RewardNet modules"):
        save_reward(torch.nn.Linear(2, 1), tmp_path / "linear.pt")
    assert list(tmp_path.iterdir()) == []
