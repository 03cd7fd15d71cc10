"""The loss a reader sees is the loss that trains: subclasses, swaps and set_keys count.

A fused update implements exactly one loss class. A subclass that overrides ``forward``,
or a loss module swapped in after construction, must take the reference path and change
training; renamed keys (``set_keys``) must be the keys training reads.
"""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from tdimitation.algorithms import BC, GAIL, DemonstrationData
from tdimitation.data import rollout
from tdimitation.envs import make_env
from tdimitation.objectives.adversarial import DiscriminatorLoss
from tdimitation.objectives.bc import BCLoss
from tdimitation.objectives.dqn import QLearningLoss
from tdimitation.objectives.ppo import PPOClipLoss
from tdimitation.objectives.sac import DiscreteSoftActorCriticLoss, SoftActorCriticLoss
from tdimitation.policies import policy_from_string
from tdimitation.rl import DQN, PPO, SAC
from tests.helpers import quiet_trainer


@pytest.fixture(scope="module")
def demos():
    env = make_env("tdimitation/CartPoleFixed-v1", num_envs=4, seed=0)
    trajectories = rollout(policy_from_string("scripted", env=env), env, min_episodes=4)
    env.close()
    return trajectories


class NoObjectivePPO(PPOClipLoss):
    """PPO without the policy term: only the critic (and entropy) train."""

    def forward(self, tensordict):
        out = super().forward(tensordict)
        out["loss_objective"] = out["loss_objective"] * 0.0
        return out


class NoEntropyBC(BCLoss):
    """BC whose loss is zero: nothing trains."""

    def forward(self, tensordict):
        out = super().forward(tensordict)
        return TensorDict({k: v * 0.0 if k == "loss" else v for k, v in out.items()}, [])


def _ppo() -> PPO:
    return PPO("CartPole-v1", num_envs=2, n_steps=32, batch_size=32, total_frames=128, n_epochs=2)


def _actor_params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.actor.parameters()])


@pytest.mark.parametrize("when", ["subclass", "swap"])
def test_a_ppo_loss_subclass_trains_what_it_says(when):
    reference = _ppo()
    quiet_trainer().fit(reference)
    assert reference.update_path == "fused"

    model = _ppo()
    start = _actor_params(model)
    options = dict(clip_epsilon=0.2, vf_coef=0.5, ent_coef=0.0)
    loss = NoObjectivePPO(model.actor, model.critic, **options)
    model.loss_module = loss  # after construction: training must use it
    quiet_trainer().fit(model)
    assert model.update_path == "autograd: subclass NoObjectivePPO of PPOClipLoss"
    # With the objective gone and no entropy bonus the actor gets no gradient at all.
    assert torch.equal(_actor_params(model), start)
    assert not torch.equal(_actor_params(reference), start)


def test_ppo_set_keys_govern_training():
    model = _ppo()
    model.loss_module.set_keys(sample_log_prob="behaviour_log_prob")
    # The collected rounds hold "action_log_prob": the renamed key is what training reads.
    with pytest.raises(KeyError, match="behaviour_log_prob"):
        quiet_trainer().fit(model)
    model = _ppo()
    model.loss_module.set_keys(advantage="adv", value_target="vt")  # computed by the update
    quiet_trainer().fit(model)
    assert model.optimizer_steps == 2 * 2 * 2  # rounds x epochs x minibatches


def test_a_bc_loss_subclass_trains_what_it_says(demos):
    env_id = "tdimitation/CartPoleFixed-v1"
    model = BC(env_id, n_batches=20, seed=0)
    start = torch.cat([p.detach().flatten() for p in model.policy.parameters()])
    model.loss_module = NoEntropyBC(model.policy)
    quiet_trainer().fit(model, datamodule=DemonstrationData(env_id, trajectories=demos))
    assert model.update_path == "autograd: subclass NoEntropyBC of BCLoss"
    after = torch.cat([p.detach().flatten() for p in model.policy.parameters()])
    assert torch.equal(after, start)


def test_bc_set_keys_govern_training(demos):
    env_id = "tdimitation/CartPoleFixed-v1"
    labelled = demos.clone()
    # Train on other labels than the actions taken: always action 0.
    labelled.set("label", torch.zeros_like(demos["action"]))
    model = BC(env_id, n_batches=200, seed=0)
    model.loss_module.set_keys(action="label")
    quiet_trainer().fit(model, datamodule=DemonstrationData(env_id, trajectories=labelled))
    with torch.no_grad():
        logits = model.policy.logits(demos["observation"])
    assert (logits.argmax(-1) == 0).float().mean() > 0.95


class FrozenDiscriminator(DiscriminatorLoss):
    def forward(self, expert, generator):
        out = super().forward(expert, generator)
        out["loss"] = out["loss"] * 0.0
        return out


def test_a_discriminator_loss_subclass_trains_what_it_says(demos):
    model = GAIL(
        "tdimitation/CartPoleFixed-v1",
        demonstrations=demos,
        generator_kwargs={"n_steps": 64, "batch_size": 64, "n_epochs": 1},
        num_envs=4,
        total_frames=512,
        demo_batch_size=64,
        n_disc_updates_per_round=2,
    )
    model.disc_loss = FrozenDiscriminator(model.reward_net)
    start = [p.detach().clone() for p in model.reward_net.parameters()]
    quiet_trainer().fit(model)
    assert all(torch.equal(a, b) for a, b in zip(start, model.reward_net.parameters(), strict=True))


def _zero_actor_loss(loss_class: type) -> type:
    """A subclass of an SAC loss whose actor term is zero: the actor gets no gradient."""

    class NoActorSAC(loss_class):
        def forward(self, tensordict):
            out = super().forward(tensordict)
            out["loss_actor"] = out["loss_actor"] * 0.0
            return out

    return NoActorSAC


def _sac(env_id: str) -> SAC:
    return SAC(
        env_id=env_id,
        num_envs=2,
        frames_per_batch=32,
        total_frames=128,
        learning_starts=64,
        batch_size=32,
        hidden_sizes=(16, 16),
        seed=0,
    )


@pytest.mark.parametrize(
    ("env_id", "loss_class"),
    [("Pendulum-v1", SoftActorCriticLoss), ("CartPole-v1", DiscreteSoftActorCriticLoss)],
)
def test_a_sac_loss_subclass_trains_what_it_says(env_id, loss_class):
    reference = _sac(env_id)
    start = _actor_params(reference)
    quiet_trainer().fit(reference)
    assert not torch.equal(_actor_params(reference), start)

    model = _sac(env_id)
    critics_start = torch.cat([p.detach().flatten() for p in model.qvalue.parameters()])
    # Swapped in after construction: the update must call this module's forward.
    model.loss = _zero_actor_loss(loss_class)(model.actor, model.qvalue)
    quiet_trainer().fit(model)
    assert torch.equal(_actor_params(model), start)
    # The critics still train: the rest of the loss is untouched.
    critics = torch.cat([p.detach().flatten() for p in model.qvalue.parameters()])
    assert not torch.equal(critics, critics_start)


class NoQLearning(QLearningLoss):
    """Q-learning whose loss is zero: the Q-network does not move."""

    def forward(self, tensordict):
        out = super().forward(tensordict)
        out["loss"] = out["loss"] * 0.0
        return out


def _dqn() -> DQN:
    return DQN(
        env_id="CartPole-v1",
        num_envs=2,
        frames_per_batch=64,
        total_frames=256,
        learning_starts=64,
        batch_size=32,
        gradient_steps=8,
        hidden_sizes=(16, 16),
        seed=0,
    )


def test_a_dqn_loss_subclass_trains_what_it_says():
    reference = _dqn()
    start = _actor_params(reference)
    quiet_trainer().fit(reference)
    assert reference.num_updates > 0
    assert not torch.equal(_actor_params(reference), start)

    model = _dqn()
    model.loss = NoQLearning(model.actor)  # after construction: training must use it
    quiet_trainer().fit(model)
    assert model.num_updates == reference.num_updates
    assert torch.equal(_actor_params(model), start)


def test_sac_and_dqn_set_keys_govern_training():
    # The collected rounds hold "observation": a renamed key is what training reads.
    sac = _sac("Pendulum-v1")
    sac.loss.set_keys(observation="obs")
    with pytest.raises(KeyError, match="obs"):
        quiet_trainer().fit(sac)
    dqn = _dqn()
    dqn.loss.set_keys(terminated="ended")
    with pytest.raises(KeyError, match="ended"):
        quiet_trainer().fit(dqn)
