"""torchrl's own actor and critic modules train with every loss and algorithm.

The losses read networks through the Protocols of ``tdimitation.objectives.protocols``;
``ProbabilisticActor``/``ValueOperator`` modules are adapted in the constructors. Each
algorithm test trains a few steps on a real env and checks that the user's module moved
and the losses stayed finite.
"""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from tdimitation.algorithms import AIRL, BC, GAIL, SQIL, DemonstrationData
from tdimitation.data import rollout
from tdimitation.envs import make_env
from tdimitation.errors import PolicyError
from tdimitation.evaluation import evaluate_policy
from tdimitation.objectives import (
    BCLoss,
    DiscreteSoftActorCriticLoss,
    PPOClipLoss,
    QLearningLoss,
    SoftActorCriticLoss,
)
from tdimitation.objectives.protocols import ActionEvaluator, StateValueCritic
from tdimitation.policies import load_policy, policy_from_string
from tdimitation.policies.adapters import TorchRLPolicy, TorchRLValue
from tdimitation.rl import DQN, PPO, SAC
from tests.helpers import quiet_trainer
from tests.torchrl_modules import (
    action_value_operator,
    discrete_actor,
    flat_parameters,
    q_operator,
    tanh_normal_actor,
    value_operator,
)

CARTPOLE = "tdimitation/CartPoleFixed-v1"


@pytest.fixture(scope="module")
def cartpole_demos():
    env = make_env(CARTPOLE, num_envs=4, seed=0)
    demos = rollout(policy_from_string("scripted", env=env), env, min_episodes=4)
    env.close()
    return demos


@pytest.fixture(scope="module")
def pendulum_demos():
    env = make_env("Pendulum-v1", num_envs=4, seed=0)
    demos = rollout(policy_from_string("scripted", env=env), env, min_episodes=2)
    env.close()
    return demos


def _batch(n: int = 16, obs_dim: int = 4) -> TensorDict:
    g = torch.Generator().manual_seed(0)
    return TensorDict(
        {
            "observation": torch.randn(n, obs_dim, generator=g),
            "action": torch.randint(2, (n,), generator=g),
            "action_log_prob": torch.full((n,), math.log(0.5)),
            "advantage": torch.randn(n, generator=g),
            "value_target": torch.randn(n, generator=g),
        },
        [n],
    )


# ----------------------------------------------------------------- the losses
def test_ppo_loss_takes_a_probabilistic_actor_and_a_value_operator():
    actor, critic = discrete_actor(4, 2), value_operator(4)
    loss = PPOClipLoss(actor, critic, ent_coef=0.01)
    assert isinstance(loss.actor, TorchRLPolicy) and loss.actor.module is actor
    assert isinstance(loss.critic, TorchRLValue) and loss.critic.module is critic
    assert isinstance(loss.actor, ActionEvaluator)
    assert isinstance(loss.critic, StateValueCritic)
    out = loss(_batch())
    total = out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]
    total.backward()
    assert torch.isfinite(total)
    # Gradients reach the user's own parameters (shared, not copied).
    assert all(p.grad is not None for p in actor.parameters())
    assert all(p.grad is not None for p in critic.parameters())
    # The categorical entropy is the distribution's, in closed form.
    with torch.no_grad():
        logits = actor.get_dist(TensorDict({"observation": _batch()["observation"]}, [])).logits
        entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(out["entropy"], entropy)


def test_bc_loss_on_a_discrete_probabilistic_actor_is_the_negative_log_likelihood():
    # It used to regress integer actions and fail on the dtype.
    actor = discrete_actor(4, 2)
    batch = _batch()
    out = BCLoss(actor, ent_weight=0.0)(batch)
    with torch.no_grad():
        td = TensorDict({"observation": batch["observation"]}, [])
        log_p = actor.get_dist(td).logits.log_softmax(-1)
        expected = -log_p.gather(-1, batch["action"].unsqueeze(-1)).mean()
    torch.testing.assert_close(out["neglogp"], expected)


def test_one_hot_and_index_actors_score_actions_alike():
    torch.manual_seed(0)
    index_actor = TorchRLPolicy(discrete_actor(4, 3))
    one_hot_actor = TorchRLPolicy(discrete_actor(4, 3, one_hot=True))
    one_hot_actor.module.load_state_dict(index_actor.module.state_dict())
    obs, action = torch.randn(8, 4), torch.randint(3, (8,))
    torch.testing.assert_close(
        one_hot_actor.log_prob(obs, action), index_actor.log_prob(obs, action)
    )
    # As a policy it writes indices, as the env's Discrete action spec wants.
    td = one_hot_actor(TensorDict({"observation": obs}, [8]))
    assert td["action"].shape == (8,) and td["action"].dtype == torch.int64
    assert td["action_log_prob"].shape == (8,)


def test_sac_losses_take_torchrl_actors_and_critics():
    actor = tanh_normal_actor(3, 1, -2.0, 2.0)
    # No spec on the actor: the default target entropy -dim(A) is unknown.
    with pytest.raises(ValueError, match="target_entropy"):
        SoftActorCriticLoss(actor, q_operator(3, 1))
    loss = SoftActorCriticLoss(actor, q_operator(3, 1), target_entropy=-1.0)
    assert loss.qvalue_network.n == 2
    n = 8
    batch = TensorDict(
        {
            "observation": torch.randn(n, 3),
            "action": torch.rand(n, 1) * 4 - 2,
            ("next", "observation"): torch.randn(n, 3),
            ("next", "reward"): torch.randn(n, 1),
            ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool),
        },
        [n],
    )
    out = loss(batch)
    (out["loss_actor"] + out["loss_qvalue"] + out["loss_alpha"]).backward()
    assert all(torch.isfinite(out[k]) for k in ("loss_actor", "loss_qvalue", "loss_alpha"))
    assert all(p.grad is not None for p in actor.parameters())
    # The target critics are a frozen copy, outside the trained parameters.
    assert all(not p.requires_grad for p in loss.target_qvalue_network.parameters())

    discrete = DiscreteSoftActorCriticLoss(
        discrete_actor(4, 2), action_value_operator(4, 2), target_entropy=0.5
    )
    batch = _batch().select("observation", "action")
    batch["next"] = TensorDict(
        {
            "observation": torch.randn(16, 4),
            "reward": torch.ones(16, 1),
            "terminated": torch.zeros(16, 1, dtype=torch.bool),
        },
        [16],
    )
    assert torch.isfinite(discrete(batch)["loss_qvalue"])


def test_q_learning_loss_takes_a_torchrl_q_network():
    network = action_value_operator(4, 2)
    loss = QLearningLoss(network, gamma=0.9)
    batch = _batch().select("observation", "action")
    batch["next"] = TensorDict(
        {
            "observation": torch.randn(16, 4),
            "reward": torch.ones(16, 1),
            "terminated": torch.zeros(16, 1, dtype=torch.bool),
        },
        [16],
    )
    out = loss(batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert all(p.grad is not None for p in network.parameters())
    with torch.no_grad():
        next(network.parameters()).add_(1.0)
    loss.update_target(1.0)
    torch.testing.assert_close(flat_parameters(loss.target_net.module), flat_parameters(network))


def test_a_deterministic_discrete_policy_is_refused_by_bc():
    from tensordict.nn import TensorDictModule
    from torch import nn

    class Argmax(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, observation):
            return self.linear(observation).argmax(-1)

    policy = TensorDictModule(Argmax(), in_keys=["observation"], out_keys=["action"])
    with pytest.raises(PolicyError, match="stochastic policy"):
        BCLoss(policy)(_batch())


# -------------------------------------------------------------- the algorithms
def _bc_accuracy(policy: TorchRLPolicy, demos) -> float:
    with torch.no_grad():
        logits = policy.logits(demos["observation"])
    return float((logits.argmax(-1) == demos["action"]).float().mean())


def test_bc_trains_a_torchrl_discrete_actor_and_improves(cartpole_demos):
    torch.manual_seed(0)
    actor = discrete_actor(4, 2)
    model = BC(CARTPOLE, n_batches=600, learning_rate=5e-3, seed=0, policy=actor)
    assert model.policy.module is actor
    before = _bc_accuracy(model.policy, cartpole_demos)
    trainer = quiet_trainer(log_every_n_steps=1)
    trainer.fit(model, datamodule=DemonstrationData(CARTPOLE, trajectories=cartpole_demos))
    after = _bc_accuracy(model.policy, cartpole_demos)
    # From chance to the expert's action almost everywhere (tdimitation's own 32-32 actor
    # reaches 0.97 with these settings).
    assert before < 0.8 and after > 0.93
    assert math.isfinite(float(trainer.callback_metrics["bc/loss"]))
    # Collection and evaluation act with the user's module (through its adapter).
    env = make_env(CARTPOLE, num_envs=2, seed=1)
    stats = evaluate_policy(model.export_policy(), env, n_episodes=2)
    env.close()
    assert stats["return_mean"] > 100


def test_bc_trains_a_torchrl_tanh_normal_actor(pendulum_demos):
    torch.manual_seed(0)
    actor = tanh_normal_actor(3, 1, -2.0, 2.0)
    start = flat_parameters(actor)
    model = BC("Pendulum-v1", n_batches=64, seed=0, policy=actor)
    trainer = quiet_trainer(log_every_n_steps=1)
    trainer.fit(model, datamodule=DemonstrationData("Pendulum-v1", trajectories=pendulum_demos))
    assert not torch.equal(flat_parameters(actor), start)
    assert math.isfinite(float(trainer.callback_metrics["bc/loss"]))


def _ppo(env_id: str, actor, critic) -> PPO:
    return PPO(
        env_id,
        num_envs=2,
        n_steps=64,
        batch_size=32,
        total_frames=256,
        n_epochs=2,
        actor=actor,
        critic=critic,
    )


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_ppo_trains_torchrl_actor_and_critic(env_id, tmp_path):
    torch.manual_seed(0)
    if env_id == "CartPole-v1":
        actor, critic = discrete_actor(4, 2), value_operator(4)
    else:
        actor, critic = tanh_normal_actor(3, 1, -2.0, 2.0), value_operator(3)
    model = _ppo(env_id, actor, critic)
    actor_start, critic_start = flat_parameters(actor), flat_parameters(critic)
    trainer = quiet_trainer(default_root_dir=tmp_path)
    trainer.fit(model)
    assert not torch.equal(flat_parameters(actor), actor_start)
    assert not torch.equal(flat_parameters(critic), critic_start)
    # The fused update needs tdimitation's MLPs: it says so and takes autograd.
    assert model.update_path == "autograd: unsupported actor TorchRLPolicy"
    for key in ("train/loss_objective", "train/loss_critic"):
        assert math.isfinite(float(trainer.callback_metrics[key]))
    # Checkpoints hold the weights in the state dict; the policy file entry says why not.
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    with pytest.raises(PolicyError, match="holds no exported policy"):
        load_policy("tdimitation", path)
    restored = PPO.load_from_checkpoint(
        path,
        actor=discrete_actor(4, 2) if env_id == "CartPole-v1" else tanh_normal_actor(3, 1, -2, 2),
        critic=value_operator(4 if env_id == "CartPole-v1" else 3),
        weights_only=True,
    )
    assert torch.equal(flat_parameters(restored.actor.module), flat_parameters(actor))


def test_ppo_trains_a_torchrl_one_hot_actor_with_tdimitation_critic():
    torch.manual_seed(0)
    actor = discrete_actor(4, 2, one_hot=True)
    model = _ppo("CartPole-v1", actor, None)
    start = flat_parameters(actor)
    quiet_trainer().fit(model)
    assert not torch.equal(flat_parameters(actor), start)


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_sac_trains_torchrl_actor_and_critics(env_id):
    torch.manual_seed(0)
    if env_id == "Pendulum-v1":
        actor, critic = tanh_normal_actor(3, 1, -2.0, 2.0), q_operator(3, 1)
    else:
        actor, critic = discrete_actor(4, 2), action_value_operator(4, 2)
    model = SAC(
        env_id,
        num_envs=2,
        frames_per_batch=32,
        total_frames=128,
        learning_starts=64,
        batch_size=32,
        actor=actor,
        qvalue=critic,
    )
    actor_start, critic_start = flat_parameters(actor), flat_parameters(critic)
    trainer = quiet_trainer()
    trainer.fit(model)
    assert not torch.equal(flat_parameters(actor), actor_start)
    assert not torch.equal(flat_parameters(critic), critic_start)
    for key in ("train/loss_actor", "train/loss_qvalue", "train/q_value"):
        assert math.isfinite(float(trainer.callback_metrics[key]))
    # Deterministic evaluation runs the torchrl actor's deterministic sample.
    env = make_env(env_id, num_envs=1, seed=3)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        stats = evaluate_policy(model.export_policy(), env, n_episodes=1)
    env.close()
    assert math.isfinite(stats["return_mean"])


@pytest.mark.parametrize("algorithm", [GAIL, AIRL])
def test_adversarial_imitation_trains_a_torchrl_ppo_generator(algorithm, cartpole_demos):
    torch.manual_seed(0)
    actor, critic = discrete_actor(4, 2), value_operator(4)
    model = algorithm(
        CARTPOLE,
        demonstrations=cartpole_demos,
        generator_kwargs={
            "n_steps": 64,
            "batch_size": 64,
            "n_epochs": 1,
            "actor": actor,
            "critic": critic,
        },
        num_envs=4,
        total_frames=512,
        demo_batch_size=64,
        n_disc_updates_per_round=2,
    )
    # Networks are not hyperparameters (checkpoints load with weights_only=True).
    assert set(model.hparams["generator_kwargs"]) == {"n_steps", "batch_size", "n_epochs"}
    assert "actor" not in model.generator.hparams
    actor_start, reward_start = flat_parameters(actor), flat_parameters(model.reward_net)
    trainer = quiet_trainer()
    trainer.fit(model)
    assert not torch.equal(flat_parameters(actor), actor_start)
    assert not torch.equal(flat_parameters(model.reward_net), reward_start)
    assert math.isfinite(float(trainer.callback_metrics["train/gen/loss_objective"]))
    assert math.isfinite(float(trainer.callback_metrics["train/disc/accuracy"]))


def test_dagger_trains_a_torchrl_actor_without_stored_log_probs():
    from torchrl.modules import ProbabilisticActor

    from tdimitation.algorithms import DAgger

    torch.manual_seed(0)
    # return_log_prob=False: the adapter adds action_log_prob itself when acting.
    actor = discrete_actor(4, 2)
    actor = ProbabilisticActor(
        actor.module[0], in_keys=["logits"], distribution_class=torch.distributions.Categorical
    )
    td = TorchRLPolicy(actor)(TensorDict({"observation": torch.randn(3, 4)}, [3]))
    assert td["action_log_prob"].shape == (3,)
    model = DAgger(
        "CartPole-v1",
        expert="scripted",
        n_rounds=1,
        num_envs=2,
        min_episodes=2,
        bc_epochs=2,
        batch_size=32,
        seed=0,
        policy=actor,
    )
    assert "policy" not in model.hparams
    start = flat_parameters(actor)
    quiet_trainer().fit(model)
    assert not torch.equal(flat_parameters(actor), start)


def test_dqn_trains_a_torchrl_q_network_and_explores_with_the_runs_generator(tmp_path):
    network = action_value_operator(4, 2)
    start = flat_parameters(network)

    def build():
        return DQN(
            "CartPole-v1",
            num_envs=2,
            frames_per_batch=32,
            total_frames=192,
            learning_starts=64,
            batch_size=32,
            gradient_steps=4,
            qnet=network,
        )

    model = build()
    assert model.actor.q_network.module is network
    trainer = quiet_trainer(default_root_dir=tmp_path)
    trainer.fit(model)
    assert not torch.equal(flat_parameters(network), start)
    assert model.num_updates > 0
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    # Exploring: random actions come from the run's generator, attached to the wrapper.
    assert model.actor.rng is model.rng
    # Evaluation is greedy through the user's network.
    policy = model.export_policy()
    assert float(policy.epsilon) == 0.0
    obs = torch.randn(5, 4)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        action = policy(TensorDict({"observation": obs}, [5]))["action"]
    expected = network(TensorDict({"observation": obs}, [5]))["action_value"].argmax(-1)
    assert torch.equal(action, expected)
    # A checkpoint restores the user's network (passed again, as it is no hyperparameter).
    path = tmp_path / "dqn.ckpt"
    trainer.save_checkpoint(path)
    restored = DQN.load_from_checkpoint(path, qnet=action_value_operator(4, 2), weights_only=True)
    assert torch.equal(flat_parameters(restored.actor), flat_parameters(model.actor))


def test_sqil_trains_a_torchrl_q_network_through_agent_kwargs(cartpole_demos):
    network = action_value_operator(4, 2)
    start = flat_parameters(network)
    model = SQIL(
        "CartPole-v1",
        demonstrations=cartpole_demos,
        agent="dqn",
        num_envs=2,
        total_frames=192,
        agent_kwargs=dict(
            frames_per_batch=32, learning_starts=64, batch_size=32, gradient_steps=4, qnet=network
        ),
    )
    assert "qnet" not in model.hparams["agent_kwargs"]
    quiet_trainer().fit(model)
    assert not torch.equal(flat_parameters(network), start)
