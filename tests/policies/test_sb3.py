"""Stable-Baselines3 checkpoints: real SB3 files, checked against SB3's own predictions.

The fixtures (tests/policies/fixtures/README.md) were written by SB3 2.2.1 in a separate
environment; the anchor is the PPO CartPole expert of imitation's test data.
"""

import io
import json
import shutil
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from tdimitation.data import rollout, rollout_stats
from tdimitation.envs import make_env
from tdimitation.errors import PolicyError, SpaceMismatchError
from tdimitation.policies import (
    CategoricalActor,
    GaussianActor,
    QValueActor,
    TanhNormalActor,
    load_policy,
    policy_from_string,
    save_policy,
)
from tdimitation.policies.sb3 import read_sb3_zip

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "sb3_expected.json").read_text())
ANCHOR_NAME = "expert_models__cartpole_0__policies__final__model.zip"
ANCHOR = Path(__file__).resolve().parents[2].parent / "shared" / "anchors" / "imitation_testdata"
TOL = {"rtol": 0, "atol": 1e-5}
ACTOR_CLASS = {
    "sac_pendulum": TanhNormalActor,
    "dqn_cartpole": QValueActor,
    "ppo_pendulum": GaussianActor,
    "ppo_cartpole_anchor": CategoricalActor,
}


def _zip_path(name: str) -> Path:
    entry = EXPECTED["models"][name]
    if entry["zip"] is not None:
        return FIXTURES / entry["zip"]
    if not (ANCHOR / ANCHOR_NAME).is_file():
        pytest.skip("../shared/anchors is not present")
    return ANCHOR / ANCHOR_NAME


def _f64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _act(policy, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
    mode = ExplorationType.DETERMINISTIC if deterministic else ExplorationType.RANDOM
    with set_exploration_type(mode), torch.no_grad():
        td = policy(TensorDict({"observation": obs}, batch_size=[obs.shape[0]]))
    return td.get("action")


def _rewrite(src: Path, dst: Path, data=None, state_dict=None, drop=()) -> Path:
    """Copy an SB3 zip, replacing its ``data`` JSON or state dict, or dropping entries."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            if item.filename in drop:
                continue
            payload = zin.read(item.filename)
            if item.filename == "data" and data is not None:
                payload = json.dumps(data).encode()
            if item.filename == "policy.pth" and state_dict is not None:
                buffer = io.BytesIO()
                torch.save(state_dict, buffer)
                payload = buffer.getvalue()
            zout.writestr(item, payload)
    return dst


def _data(src: Path) -> dict:
    with zipfile.ZipFile(src) as archive:
        return json.loads(archive.read("data"))


@pytest.mark.parametrize("name", sorted(EXPECTED["models"]))
def test_reproduces_sb3_predictions(name):
    entry = EXPECTED["models"][name]
    env = make_env(entry["env_id"])
    policy = load_policy(entry["kind"], _zip_path(name), env=env)
    env.close()
    assert type(policy) is ACTOR_CLASS[name]
    obs = torch.tensor(entry["obs"], dtype=torch.float32)
    assert obs.shape[0] == 20
    expected = _f64(entry["actions"])
    actions = _act(policy, obs).double()
    torch.testing.assert_close(actions.reshape(expected.shape), expected, rtol=0, atol=1e-5)
    with torch.no_grad():
        if "q_values" in entry:
            got = policy.q_values(obs)
            torch.testing.assert_close(got.double(), _f64(entry["q_values"]), **TOL)
        if "action_log_probs" in entry:
            got = torch.log_softmax(policy.logits(obs), -1)
            want = _f64(entry["action_log_probs"])
            torch.testing.assert_close(got.double(), want, **TOL)
        if "mean" in entry:
            got = policy.loc(obs)
            torch.testing.assert_close(got.double(), _f64(entry["mean"]), **TOL)
        if "log_prob" in entry:
            action = torch.tensor(entry.get("mean", entry["actions"]), dtype=torch.float32)
            got = policy.log_prob(obs, action if "mean" in entry else action.long())
            torch.testing.assert_close(got.double(), _f64(entry["log_prob"]), **TOL)


def test_anchor_ppo_expert_scores_on_cartpole(anchors):
    env = make_env("CartPole-v1", num_envs=8, seed=0)
    policy = load_policy("sb3-ppo", anchors / ANCHOR_NAME, env=env)
    try:
        stats = rollout_stats(rollout(policy, env, min_episodes=20, deterministic=True))
    finally:
        env.close()
    assert stats["n_traj"] >= 20
    assert stats["return_mean"] >= 475


def test_reads_checkpoint_metadata(anchors):
    checkpoint = read_sb3_zip(anchors / ANCHOR_NAME)
    assert checkpoint.policy_class == "stable_baselines3.common.policies.ActorCriticPolicy"
    assert checkpoint.sb3_version == "2.2.0a3"
    assert checkpoint.observation_space.kind == "Box"
    assert checkpoint.observation_space.shape == (4,)
    assert checkpoint.action_space.kind == "Discrete" and checkpoint.action_space.n == 2
    sac = read_sb3_zip(FIXTURES / "sac_pendulum.zip")
    assert sac.action_space.low.tolist() == [-2.0] and sac.action_space.high.tolist() == [2.0]


@pytest.mark.parametrize(
    "zip_name, actor_class, hidden, activation",
    [
        ("sac_pendulum.zip", TanhNormalActor, [32, 32], "relu"),
        ("dqn_cartpole.zip", QValueActor, [32, 32], "tanh"),
        ("ppo_pendulum.zip", GaussianActor, [16, 16], "relu"),
    ],
)
def test_auto_kind_infers_algorithm_and_architecture(zip_name, actor_class, hidden, activation):
    policy = policy_from_string(f"sb3:{FIXTURES / zip_name}")
    assert type(policy) is actor_class
    assert policy.config["hidden_sizes"] == hidden
    assert policy.config["activation"] == activation


def test_directory_with_model_zip_and_round_trip_through_save_policy(tmp_path):
    shutil.copy(FIXTURES / "sac_pendulum.zip", tmp_path / "model.zip")
    policy = load_policy("sb3-sac", tmp_path)
    saved = save_policy(policy, tmp_path / "policy.pt")
    again = load_policy("tdimitation", saved)
    obs = torch.tensor(EXPECTED["models"]["sac_pendulum"]["obs"], dtype=torch.float32)
    torch.testing.assert_close(_act(again, obs), _act(policy, obs))
    # Stochastic actions stay inside the bounds SB3 rescales to.
    sampled = _act(policy, obs.repeat(20, 1), deterministic=False)
    assert sampled.abs().max() <= 2.0 and sampled.std() > 0


def test_gaussian_actions_are_clipped_to_bounds_like_sb3_predict():
    policy = load_policy("sb3-ppo", FIXTURES / "ppo_pendulum.zip")
    obs = torch.tensor([[1.0, 0.0, 1e4], [1.0, 0.0, -1e4], [-1.0, 0.0, 8.0]])
    mean = policy.loc(obs).detach()
    assert mean.abs().max() > 2  # the test needs means outside the bounds
    torch.testing.assert_close(_act(policy, obs), mean.clamp(-2.0, 2.0))


def test_wrong_kind_names_the_right_loader(anchors):
    with pytest.raises(PolicyError, match="ActorCriticPolicy.*sb3-ppo"):
        load_policy("sb3-sac", anchors / ANCHOR_NAME)
    with pytest.raises(PolicyError, match="DQNPolicy.*sb3-dqn"):
        load_policy("sb3-ppo", FIXTURES / "dqn_cartpole.zip")


@pytest.mark.parametrize(
    "class_key, base, kind, message",
    [
        ("ActorCriticCnnPolicy", "ppo_pendulum.zip", "sb3-ppo", "ActorCriticCnnPolicy.*CNN"),
        ("MultiInputActorCriticPolicy", "ppo_pendulum.zip", "sb3", "MultiInput.*dict obs"),
        ("sac.CnnPolicy", "sac_pendulum.zip", "sb3-sac", r"sac\.policies\.CnnPolicy"),
        ("sac.MultiInputPolicy", "sac_pendulum.zip", "sb3", "MultiInputPolicy"),
        ("dqn.CnnPolicy", "dqn_cartpole.zip", "sb3-dqn", r"dqn\.policies\.CnnPolicy"),
        ("TD3Policy", "sac_pendulum.zip", "sb3", r"td3\.policies\.TD3Policy"),
    ],
)
def test_refuses_unsupported_policy_classes(tmp_path, class_key, base, kind, message):
    data = _data(FIXTURES / base)
    data["policy_class"] = EXPECTED["policy_classes"][class_key]
    path = _rewrite(FIXTURES / base, tmp_path / "model.zip", data=data)
    with pytest.raises(PolicyError, match=f"unsupported.*{message}"):
        load_policy(kind, path)


def test_refuses_sde_unknown_parameters_and_activations(tmp_path):
    src = FIXTURES / "ppo_pendulum.zip"
    data = _data(src)
    data["use_sde"] = True
    with pytest.raises(PolicyError, match="gSDE"):
        load_policy("sb3-ppo", _rewrite(src, tmp_path / "sde.zip", data=data))

    with zipfile.ZipFile(src) as archive:
        state = torch.load(io.BytesIO(archive.read("policy.pth")), weights_only=True)
    state["features_extractor.linear.weight"] = torch.zeros(3, 3)
    path = _rewrite(src, tmp_path / "extractor.zip", state_dict=state)
    with pytest.raises(PolicyError, match="unsupported parameters.*features_extractor"):
        load_policy("sb3-ppo", path)

    data = _data(src)
    data["policy_kwargs"]["activation_fn"] = "<class 'torch.nn.modules.activation.Sigmoid'>"
    with pytest.raises(PolicyError, match="activation Sigmoid is unsupported"):
        load_policy("sb3-ppo", _rewrite(src, tmp_path / "sigmoid.zip", data=data))


def test_corrupted_and_missing_files(tmp_path):
    src = FIXTURES / "dqn_cartpole.zip"
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(PolicyError, match="corrupted"):
        load_policy("sb3-dqn", truncated)
    text = tmp_path / "text.zip"
    text.write_text("not a zip")
    with pytest.raises(PolicyError, match="corrupted"):
        load_policy("sb3-dqn", text)
    no_policy = _rewrite(src, tmp_path / "no_policy.zip", drop=("policy.pth",))
    with pytest.raises(PolicyError, match="corrupted.*policy.pth"):
        load_policy("sb3-dqn", no_policy)
    bad_pth = tmp_path / "bad_pth.zip"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bad_pth, "w") as zout:
        for item in zin.infolist():
            payload = b"garbage" if item.filename == "policy.pth" else zin.read(item.filename)
            zout.writestr(item, payload)
    with pytest.raises(PolicyError, match="corrupted"):
        load_policy("sb3-dqn", bad_pth)
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy("sb3-dqn", tmp_path / "missing.zip")
    with pytest.raises(PolicyError, match="needs a path"):
        policy_from_string("sb3-ppo")
    shutil.copy(src, tmp_path / "model.zip")
    (tmp_path / "vec_normalize.pkl").write_bytes(b"")
    with pytest.raises(PolicyError, match="VecNormalize"):
        load_policy("sb3-dqn", tmp_path)


class _BoxObsDiscreteActs(gym.Env):
    """Pendulum-shaped observations with Discrete actions: only the action kind differs."""

    observation_space = gym.spaces.Box(-8.0, 8.0, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, np.float32), {}

    def step(self, action):
        return np.zeros(3, np.float32), 0.0, True, False, {}


def test_space_mismatches(anchors):
    pendulum = make_env("Pendulum-v1")
    with pytest.raises(SpaceMismatchError, match="observations of shape"):
        load_policy("sb3-ppo", anchors / ANCHOR_NAME, env=pendulum)
    pendulum.close()
    mountain_car = make_env("MountainCarContinuous-v0")
    with pytest.raises(SpaceMismatchError):
        load_policy("sb3-sac", FIXTURES / "sac_pendulum.zip", env=mountain_car)
    mountain_car.close()
    discrete = make_env(_BoxObsDiscreteActs)
    with pytest.raises(SpaceMismatchError, match="acts in Box"):
        load_policy("sb3-ppo", FIXTURES / "ppo_pendulum.zip", env=discrete)
    discrete.close()
    one = np.ones(1, np.float32)
    rescaled = make_env(lambda: gym.wrappers.RescaleAction(gym.make("Pendulum-v1"), -one, one))
    with pytest.raises(SpaceMismatchError, match="action bounds"):
        load_policy("sb3-sac", FIXTURES / "sac_pendulum.zip", env=rescaled)
    rescaled.close()
