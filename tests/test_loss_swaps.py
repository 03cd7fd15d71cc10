"""Every algorithm trains with the loss module it holds now (continues
``test_loss_governs_training.py``).

For each algorithm: a loss *subclass* overriding ``forward`` changes training, and a plain
loss instance with other settings, assigned after construction, is the one that trains.
"""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from tdimitation.algorithms import AIRL, BC, GAIL, SQIL, DAgger, DemonstrationData
from tdimitation.algorithms.preference import PreferenceComparisons
from tdimitation.data import rollout
from tdimitation.envs import make_env
from tdimitation.objectives import (
    AIRLDiscriminatorLoss,
    BCLoss,
    DiscriminatorLoss,
    PPOClipLoss,
    PreferenceLoss,
    PreferenceModel,
    QLearningLoss,
    SoftActorCriticLoss,
)
from tdimitation.policies import policy_from_string
from tdimitation.rl import DQN, PPO, SAC
from tests.helpers import quiet_trainer
from tests.torchrl_modules import flat_parameters

CARTPOLE = "tdimitation/CartPoleFixed-v1"


@pytest.fixture(scope="module")
def demos():
    env = make_env(CARTPOLE, num_envs=4, seed=0)
    trajectories = rollout(policy_from_string("scripted", env=env), env, min_episodes=4)
    env.close()
    return trajectories


# ------------------------------------------------------------------------ PPO
def test_a_ppo_loss_swapped_in_trains_with_its_own_coefficients():
    model = PPO("CartPole-v1", num_envs=2, n_steps=32, batch_size=32, total_frames=128, n_epochs=2)
    actor_start, critic_start = flat_parameters(model.actor), flat_parameters(model.critic)
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(model)  # the first round trains through the fused update
    assert model.update_path == "fused"
    critic_after_first = flat_parameters(model.critic)
    assert not torch.equal(critic_after_first, critic_start)
    # Same class (the fused path still applies) without the value term: the critic stops.
    model.loss_module = PPOClipLoss(model.actor, model.critic, vf_coef=0.0)
    model.total_frames += 128
    quiet_trainer(max_epochs=1).fit(model)
    assert model.update_path == "fused"
    assert torch.equal(flat_parameters(model.critic), critic_after_first)
    assert not torch.equal(flat_parameters(model.actor), actor_start)


# ------------------------------------------------------------------------- BC
def test_a_bc_loss_swapped_in_reads_its_own_keys(demos):
    labelled = demos.clone()
    labelled.set("label", torch.zeros_like(demos["action"]))
    model = BC(CARTPOLE, n_batches=200, seed=0)
    swapped = BCLoss(model.policy)
    swapped.set_keys(action="label")
    model.loss_module = swapped
    quiet_trainer().fit(model, datamodule=DemonstrationData(CARTPOLE, trajectories=labelled))
    assert model.update_path == "fused"
    with torch.no_grad():
        logits = model.policy.logits(demos["observation"])
    assert (logits.argmax(-1) == 0).float().mean() > 0.95


# ---------------------------------------------------------------------- DAgger
class ZeroBC(BCLoss):
    def forward(self, tensordict):
        out = super().forward(tensordict)
        return TensorDict({k: v * 0.0 if k == "loss" else v for k, v in out.items()}, [])


def _dagger() -> DAgger:
    return DAgger(
        "CartPole-v1",
        expert="scripted",
        n_rounds=1,
        num_envs=2,
        min_episodes=2,
        bc_epochs=2,
        batch_size=32,
        seed=0,
    )


def test_a_dagger_loss_subclass_trains_what_it_says():
    model = _dagger()
    start = flat_parameters(model.policy)
    model.loss_module = ZeroBC(model.policy)
    quiet_trainer().fit(model)
    assert model.update_path == "autograd: subclass ZeroBC of BCLoss"
    assert torch.equal(flat_parameters(model.policy), start)


def test_a_dagger_loss_swapped_in_trains_with_its_own_weights():
    model = _dagger()
    start = flat_parameters(model.policy)
    # An overwhelming L2 penalty: every step pulls every parameter toward zero.
    model.loss_module = BCLoss(model.policy, ent_weight=0.0, l2_weight=1e6)
    quiet_trainer().fit(model)
    after = flat_parameters(model.policy)
    moved = start.abs() > 0.05  # parameters too close to zero may cross it
    assert (after.abs() < start.abs())[moved].all()


# ------------------------------------------------------------------- SAC, DQN
def test_a_sac_loss_swapped_in_trains_with_its_own_temperature():
    model = SAC(
        "Pendulum-v1",
        num_envs=2,
        frames_per_batch=32,
        total_frames=128,
        learning_starts=64,
        batch_size=32,
        hidden_sizes=(16, 16),
    )
    model.loss = SoftActorCriticLoss(model.actor, model.qvalue, fixed_alpha=True, alpha_init=0.05)
    trainer = quiet_trainer()
    trainer.fit(model)
    assert float(trainer.callback_metrics["train/alpha"]) == pytest.approx(0.05)


def test_a_dqn_loss_swapped_in_reads_its_own_keys():
    model = DQN(
        "CartPole-v1",
        num_envs=2,
        frames_per_batch=64,
        total_frames=256,
        learning_starts=64,
        batch_size=32,
        gradient_steps=8,
        hidden_sizes=(16, 16),
    )
    swapped = QLearningLoss(model.actor)
    swapped.set_keys(terminated="dqn_ended")
    model.loss = swapped
    with pytest.raises(KeyError, match="dqn_ended"):
        quiet_trainer().fit(model)


# ------------------------------------------------------------------------ SQIL
class ZeroQLearning(QLearningLoss):
    def forward(self, tensordict):
        out = super().forward(tensordict)
        out["loss"] = out["loss"] * 0.0
        return out


def _sqil(demos) -> SQIL:
    return SQIL(
        "CartPole-v1",
        demonstrations=demos,
        agent="dqn",
        num_envs=4,
        total_frames=768,
        agent_kwargs=dict(
            frames_per_batch=256,
            learning_starts=256,
            batch_size=32,
            gradient_steps=8,
            hidden_sizes=(16, 16),
            buffer_size=10_000,
        ),
    )


def test_a_sqil_loss_subclass_trains_what_it_says(demos):
    reference = _sqil(demos)
    start = flat_parameters(reference.agent.actor)
    quiet_trainer().fit(reference)
    assert not torch.equal(flat_parameters(reference.agent.actor), start)

    model = _sqil(demos)
    model.agent.loss = ZeroQLearning(model.agent.actor)
    quiet_trainer().fit(model)
    assert model.agent.num_updates == reference.agent.num_updates > 0
    assert torch.equal(flat_parameters(model.agent.actor), start)


def test_a_sqil_loss_swapped_in_reads_its_own_keys(demos):
    model = _sqil(demos)
    swapped = QLearningLoss(model.agent.actor)
    swapped.set_keys(reward="sqil_label")  # SQIL relabels ("next", "reward")
    model.agent.loss = swapped
    with pytest.raises(KeyError, match="sqil_label"):
        quiet_trainer().fit(model)


# ------------------------------------------------------------------ GAIL, AIRL
class FrozenAIRL(AIRLDiscriminatorLoss):
    def forward(self, expert, generator):
        out = super().forward(expert, generator)
        out["loss"] = out["loss"] * 0.0
        return out


def _adversarial(algorithm, demos):
    return algorithm(
        CARTPOLE,
        demonstrations=demos,
        generator_kwargs={"n_steps": 64, "batch_size": 64, "n_epochs": 1},
        num_envs=4,
        total_frames=512,
        demo_batch_size=64,
        n_disc_updates_per_round=2,
    )


def test_an_airl_loss_subclass_trains_what_it_says(demos):
    model = _adversarial(AIRL, demos)
    model.disc_loss = FrozenAIRL(model.reward_net, model.generator.export_policy())
    start = flat_parameters(model.reward_net)
    quiet_trainer().fit(model)
    assert torch.equal(flat_parameters(model.reward_net), start)


@pytest.mark.parametrize("algorithm", [GAIL, AIRL])
def test_a_discriminator_loss_swapped_in_trains_with_its_own_penalty(algorithm, demos):
    model = _adversarial(algorithm, demos)
    if algorithm is AIRL:
        swapped = AIRLDiscriminatorLoss(
            model.reward_net, model.generator.export_policy(), gradient_penalty=10.0
        )
    else:
        swapped = DiscriminatorLoss(model.reward_net, gradient_penalty=10.0)
    model.disc_loss = swapped
    trainer = quiet_trainer()
    trainer.fit(model)
    # Only a loss with a gradient penalty computes (and reports) one.
    assert float(trainer.callback_metrics["train/disc/grad_penalty"]) >= 0.0


# ----------------------------------------------------- preference comparisons
class ZeroPreferenceLoss(PreferenceLoss):
    def forward(self, pairs, preferences, member=None):
        out = super().forward(pairs, preferences, member)
        out["loss"] = out["loss"] * 0.0
        return out


def _preferences() -> PreferenceComparisons:
    return PreferenceComparisons(
        CARTPOLE,
        agent_kwargs=dict(n_steps=16, batch_size=32, n_epochs=1),
        num_envs=2,
        total_frames=32 * 7,
        num_iterations=3,
        total_comparisons=20,
        fragment_length=10,
        reward_epochs=1,
        initial_epoch_multiplier=3,
    )


def test_a_preference_loss_subclass_trains_what_it_says():
    reference = _preferences()
    start = flat_parameters(reference.reward_net)
    quiet_trainer().fit(reference)
    assert not torch.equal(flat_parameters(reference.reward_net), start)

    model = _preferences()
    model.reward_loss = ZeroPreferenceLoss(model.preference_model)
    quiet_trainer().fit(model)
    assert len(model.dataset) == len(reference.dataset) > 0
    assert torch.equal(flat_parameters(model.reward_net), start)


def test_a_preference_loss_swapped_in_trains_with_its_own_model():
    model = _preferences()
    start = flat_parameters(model.reward_net)
    # A labeller answering at random: every probability is 1/2, whatever the reward.
    model.reward_loss = PreferenceLoss(PreferenceModel(model.reward_net, noise_prob=1.0))
    quiet_trainer().fit(model)
    assert torch.equal(flat_parameters(model.reward_net), start)
