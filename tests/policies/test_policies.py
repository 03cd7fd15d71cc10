import math

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from tdimitation.envs import make_env
from tdimitation.errors import PolicyError, SpaceMismatchError
from tdimitation.policies import (
    CategoricalActor,
    GaussianActor,
    RandomPolicy,
    ZeroPolicy,
    as_policy,
    build_actor,
    load_policy,
    policy_from_string,
    save_policy,
)
from tests.conftest import DictObsEnv


def obs_td(obs):
    return TensorDict({"observation": obs}, batch_size=obs.shape[:1])


def test_categorical_actor_samples_from_its_softmax():
    torch.manual_seed(0)
    actor = CategoricalActor(3, 4, (8,))
    obs = torch.randn(1, 3).expand(20000, 3)
    out = actor(obs_td(obs))
    freq = torch.bincount(out["action"], minlength=4).float() / 20000
    probs = torch.softmax(actor.logits(obs[:1]), -1)[0]
    assert torch.allclose(freq, probs, atol=0.015)
    assert torch.allclose(out["action_log_prob"], actor.log_prob(obs, out["action"]))


def test_categorical_actor_deterministic_is_argmax():
    actor = CategoricalActor(3, 4, (8,))
    obs = torch.randn(50, 3)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        a1 = actor(obs_td(obs))["action"]
        a2 = actor(obs_td(obs))["action"]
    assert torch.equal(a1, a2) and torch.equal(a1, actor.logits(obs).argmax(-1))


def test_gaussian_actor_log_prob_and_clipping():
    actor = GaussianActor(3, 2, low=[-0.1, -0.1], high=[0.1, 0.1], log_std_init=0.5)
    obs = torch.randn(64, 3)
    out = actor(obs_td(obs))
    assert out["action"].abs().max() <= 0.1 + 1e-7
    # the unclipped sample is kept, and the stored log-prob is that sample's
    sample = out["action_sample"]
    assert (sample.abs() > 0.1).any()  # log_std 0.5: most samples leave the bounds
    assert torch.equal(out["action"], sample.clamp(-0.1, 0.1))
    assert torch.allclose(actor.log_prob(obs, sample), out["action_log_prob"], atol=1e-5)
    assert "action_sample" not in GaussianActor(3, 2)(obs_td(obs)).keys()  # unbounded
    dist = actor.get_dist(obs_td(obs))
    # the log-prob is that of the unclipped sample; check the formula on fresh actions
    actions = torch.randn(64, 2)
    assert torch.allclose(actor.log_prob(obs, actions), dist.log_prob(actions), atol=1e-5)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        det = actor(obs_td(obs))["action"]
    assert torch.allclose(det, dist.mean.clamp(-0.1, 0.1))


def test_build_actor_fits_env_spaces():
    assert isinstance(build_actor(make_env("CartPole-v1")), CategoricalActor)
    actor = build_actor(make_env("Pendulum-v1"), hidden_sizes=(16,))
    assert isinstance(actor, GaussianActor) and actor.config["high"] == [2.0]


def test_random_policy_is_seeded_and_in_bounds():
    env = make_env("Pendulum-v1", num_envs=4)
    obs = torch.zeros(4, 3)
    a = RandomPolicy(env, seed=1)(obs_td(obs))["action"]
    b = RandomPolicy(env, seed=1)(obs_td(obs))["action"]
    assert torch.equal(a, b) and a.shape == (4, 1) and a.abs().max() <= 2.0
    md = make_env(DictObsEnv)
    acts = RandomPolicy(md, seed=0)(TensorDict({}, batch_size=[500]))["action"]
    assert acts.shape == (500, 2) and acts[:, 0].max() == 2 and acts[:, 1].max() == 1
    assert acts.min() == 0


def test_zero_policy():
    env = make_env("CartPole-v1")
    out = ZeroPolicy(env)(obs_td(torch.zeros(3, 4)))
    assert out["action"].tolist() == [0, 0, 0] and out["action"].dtype == torch.int64


def test_as_policy_wraps_callables_and_modules():
    env = make_env("CartPole-v1")
    pol = as_policy(
        lambda o: (o[:, 0] > 0).astype(np.int64) if isinstance(o, np.ndarray) else None, env
    )
    out = pol(obs_td(torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]])))
    assert out["action"].tolist() == [1, 0] and out["action"].dtype == torch.int64
    module = torch.nn.Linear(4, 2)
    wrapped = as_policy(module)
    assert wrapped(obs_td(torch.zeros(5, 4)))["action"].shape == (5, 2)
    with pytest.raises(PolicyError, match="cannot use"):
        as_policy(42)


def test_save_and_load_policy_round_trip(tmp_path):
    env = make_env("CartPole-v1")
    actor = build_actor(env, hidden_sizes=(16, 16))
    path = save_policy(actor, tmp_path / "policy.pt")
    loaded = load_policy("tdimitation", path, env=env)
    obs = torch.randn(10, 4)
    assert torch.equal(loaded.logits(obs), actor.logits(obs))
    # the file loads with weights_only=True
    assert torch.load(path, weights_only=True)["format"] == "tdimitation-policy"
    assert isinstance(policy_from_string(f"tdimitation:{path}", env=env), CategoricalActor)


def test_load_policy_errors(tmp_path):
    env = make_env("CartPole-v1")
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy("tdimitation", tmp_path / "missing.pt")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(PolicyError, match="corrupted"):
        load_policy("tdimitation", bad)
    with pytest.raises(PolicyError, match="unknown policy kind 'nope'"):
        load_policy("nope")
    pendulum_actor = save_policy(build_actor(make_env("Pendulum-v1")), tmp_path / "pend.pt")
    with pytest.raises(SpaceMismatchError, match="width 3.*width 4"):
        load_policy("tdimitation", pendulum_actor, env=env)
    with pytest.raises(PolicyError, match="needs the environment"):
        policy_from_string("random")


def test_save_policy_is_atomic(tmp_path):
    env = make_env("CartPole-v1")
    path = tmp_path / "policy.pt"
    save_policy(build_actor(env), path)
    before = path.read_bytes()
    with pytest.raises(PolicyError):
        save_policy(torch.nn.Linear(2, 2), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["policy.pt"]


def test_random_and_zero_from_string():
    env = make_env("MountainCar-v0")
    assert isinstance(policy_from_string("random", env=env, seed=0), RandomPolicy)
    assert isinstance(policy_from_string("zero", env=env), ZeroPolicy)


def test_gaussian_log_prob_matches_closed_form():
    actor = GaussianActor(2, 1, log_std_init=math.log(2.0))
    obs = torch.zeros(1, 2)
    loc = actor.net(obs)
    action = loc + 2.0
    expected = -0.5 - math.log(2.0) - 0.5 * math.log(2 * math.pi)
    assert actor.log_prob(obs, action).item() == pytest.approx(expected, abs=1e-5)
