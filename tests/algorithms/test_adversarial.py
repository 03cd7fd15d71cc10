"""GAIL and AIRL: discriminator losses, the round, the guards and checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tensordict import TensorDict

from tdimitation.algorithms import AIRL, GAIL, DemonstrationData
from tdimitation.algorithms.adversarial import finished_episode_sums
from tdimitation.data.rollout import rollout
from tdimitation.envs import make_env
from tdimitation.errors import SpaceMismatchError, TdimitationError, TrajectoryError
from tdimitation.objectives import AIRLDiscriminatorLoss, DiscriminatorLoss
from tdimitation.policies import CategoricalActor, load_policy
from tdimitation.policies.actors import build_actor
from tdimitation.policies.registry import policy_from_string
from tdimitation.rewards import MLPRewardNet, ShapedRewardNet, load_reward
from tests.helpers import quiet_trainer as trainer

CARTPOLE_FIXED = "tdimitation/CartPoleFixed-v1"


@pytest.fixture(scope="module")
def cartpole_demos():
    env = make_env(CARTPOLE_FIXED, num_envs=4, seed=0)
    try:
        expert = policy_from_string("scripted", env=env)
        return rollout(expert, env, min_episodes=4, deterministic=True)
    finally:
        env.close()


def transitions(n: int, seed: int, obs_dim: int = 4) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    return TensorDict(
        {
            "observation": torch.randn(n, obs_dim, generator=g),
            "action": torch.randint(2, (n,), generator=g),
            "next": {
                "observation": torch.randn(n, obs_dim, generator=g),
                "done": torch.zeros(n, 1, dtype=torch.bool),
            },
        },
        batch_size=[n],
    )


def constant_reward_net(value: float) -> MLPRewardNet:
    net = MLPRewardNet((4,), 2, True, hidden_sizes=())
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.mlp[-1].bias.fill_(value)
    return net


# ---------------------------------------------------------------------- losses
def test_discriminator_loss_is_bce_with_expert_label_one():
    net = MLPRewardNet((4,), 2, True, hidden_sizes=(8,))
    loss = DiscriminatorLoss(net)
    expert, generator = transitions(16, 0), transitions(16, 1)
    out = loss(expert, generator)
    logit_e = net.reward(*loss.inputs(expert))
    logit_g = net.reward(*loss.inputs(generator))
    expected = F.binary_cross_entropy_with_logits(
        torch.cat([logit_e, logit_g]), torch.cat([torch.ones(16), torch.zeros(16)])
    )
    assert out["loss_discriminator"].item() == pytest.approx(expected.item(), rel=1e-6)
    accuracy_expert = (logit_e > 0).float().mean().item()
    accuracy_generator = (logit_g < 0).float().mean().item()
    assert out["accuracy_expert"].item() == pytest.approx(accuracy_expert)
    assert out["accuracy_generator"].item() == pytest.approx(accuracy_generator)
    assert out["accuracy"].item() == pytest.approx((accuracy_expert + accuracy_generator) / 2)
    assert out["n_expert"].item() == 16 and out["n_generator"].item() == 16
    out["loss"].backward()
    assert all(p.grad is not None for p in net.parameters())


def test_discriminator_metrics_for_a_constant_logit():
    loss = DiscriminatorLoss(constant_reward_net(2.0))
    out = loss(transitions(8, 0), transitions(8, 1))
    p = 1 / (1 + math.exp(-2.0))
    # expert label 1: -log p; generator label 0: -log(1 - p)
    assert out["loss_discriminator"].item() == pytest.approx(
        (-math.log(p) - math.log(1 - p)) / 2, rel=1e-6
    )
    assert out["accuracy_expert"].item() == 1.0 and out["accuracy_generator"].item() == 0.0
    entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert out["entropy"].item() == pytest.approx(entropy, rel=1e-5)
    # GAIL's generator reward: softplus(logit) = -log(1 - D)
    reward = loss.generator_reward(transitions(3, 2))
    assert reward.shape == (3, 1)
    assert torch.allclose(reward, torch.full((3, 1), -math.log(1 - p)))


def test_logit_generator_rewards():
    logit_loss = DiscriminatorLoss(constant_reward_net(2.0), generator_reward_type="logit")
    assert torch.allclose(logit_loss.generator_reward(transitions(3, 2)), torch.full((3, 1), 2.0))
    with pytest.raises(ValueError, match="softplus.*logit"):
        DiscriminatorLoss(constant_reward_net(2.0), generator_reward_type="f")
    env = make_env("CartPole-v1", num_envs=1, seed=0)
    actor = build_actor(env, hidden_sizes=(8,))
    airl = AIRLDiscriminatorLoss(constant_reward_net(0.5), actor, generator_reward_type="logit")
    batch = transitions(4, 0)
    log_prob = actor.log_prob(batch["observation"], batch["action"]).detach()
    assert torch.allclose(airl.generator_reward(batch)[:, 0], 0.5 - log_prob)
    with pytest.raises(ValueError, match="'f' or 'logit'"):
        AIRLDiscriminatorLoss(constant_reward_net(0.5), actor, generator_reward_type="softplus")
    env.close()


def test_discriminator_refuses_batches_of_different_sizes():
    loss = DiscriminatorLoss(constant_reward_net(0.0))
    with pytest.raises(ValueError, match="same size.*8 expert and 5 generator"):
        loss(transitions(8, 0), transitions(5, 1))


def test_gradient_penalty_is_added_and_trains():
    torch.manual_seed(0)
    net = MLPRewardNet((4,), 2, True, hidden_sizes=(16,))
    plain = DiscriminatorLoss(net)(transitions(32, 0), transitions(32, 1))
    torch.manual_seed(0)
    out = DiscriminatorLoss(net, gradient_penalty=10.0)(transitions(32, 0), transitions(32, 1))
    assert "grad_penalty" not in plain.keys()
    assert out["grad_penalty"].item() > 0
    assert out["loss"].item() == pytest.approx(
        out["loss_discriminator"].item() + 10 * out["grad_penalty"].item(), rel=1e-5
    )
    out["loss"].backward()  # the penalty is differentiable (create_graph)
    with pytest.raises(ValueError, match="gradient_penalty"):
        DiscriminatorLoss(net, gradient_penalty=-1.0)


def test_airl_logit_subtracts_the_policy_log_probability():
    env = make_env("CartPole-v1", num_envs=1, seed=0)
    actor = build_actor(env, hidden_sizes=(8,))
    assert isinstance(actor, CategoricalActor)
    f = constant_reward_net(0.5)
    loss = AIRLDiscriminatorLoss(f, actor)
    batch = transitions(6, 0)
    logits = loss.logits(*loss.inputs(batch))
    log_prob = actor.log_prob(batch["observation"], batch["action"]).detach()
    assert torch.allclose(logits, 0.5 - log_prob)
    # The generator is rewarded with f, not with the logit.
    assert torch.allclose(loss.generator_reward(batch), torch.full((6, 1), 0.5))
    # The policy is not a submodule: its parameters stay out of the discriminator's.
    assert {id(p) for p in loss.parameters()} == {id(p) for p in f.parameters()}
    env.close()


def test_airl_refuses_a_policy_without_log_probabilities():
    env = make_env("CartPole-v1", num_envs=1, seed=0)
    greedy = build_actor(env, kind="qvalue", hidden_sizes=(8,))
    with pytest.raises(TdimitationError, match="log-probabilities"):
        AIRLDiscriminatorLoss(constant_reward_net(0.0), greedy)
    env.close()


# ------------------------------------------------------------- bookkeeping
def test_finished_episode_sums_match_a_python_loop():
    g = torch.Generator().manual_seed(3)
    reward = torch.randn(3, 11, generator=g)
    done = torch.rand(3, 11, generator=g) < 0.25
    done[1] = False  # a sub-env with no episode end in this batch
    carry = torch.tensor([1.5, -2.0, 0.25])
    sums, new_carry = finished_episode_sums(reward, done, carry)
    expected, expected_carry = [], []
    for i in range(3):
        total = float(carry[i])
        for t in range(11):
            total += float(reward[i, t])
            if done[i, t]:
                expected.append(total)
                total = 0.0
        expected_carry.append(total)
    assert torch.allclose(sums, torch.tensor(expected), atol=1e-5)
    assert torch.allclose(new_carry, torch.tensor(expected_carry), atol=1e-5)


# ---------------------------------------------------------------- algorithms
def small(cls, demos, **kwargs):
    options = dict(
        demonstrations=demos,
        num_envs=4,
        total_frames=256,
        generator_kwargs={"n_steps": 32, "batch_size": 64, "n_epochs": 2, "hidden_sizes": [16]},
        demo_batch_size=64,
        n_disc_updates_per_round=2,
    )
    return cls(CARTPOLE_FIXED, **(options | kwargs))


@pytest.mark.parametrize("cls", [GAIL, AIRL])
def test_rounds_train_both_networks_and_log_both_returns(cls, cartpole_demos):
    torch.manual_seed(0)
    model = small(cls, cartpole_demos)
    reward_before = [p.detach().clone() for p in model.reward_net.parameters()]
    actor_before = [p.detach().clone() for p in model.generator.actor.parameters()]
    t = trainer()
    t.fit(model)
    assert model.frames == 256
    for before, after in (
        (reward_before, model.reward_net.parameters()),
        (actor_before, model.generator.actor.parameters()),
    ):
        assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    metrics = t.callback_metrics
    for key in ("frames", "train/disc/accuracy", "train/disc/loss_discriminator", "fps"):
        assert key in metrics, key
    # fixed horizon 500 > 128 steps per sub-env: no episode finished, no returns yet
    assert "episode/return" not in metrics
    assert len(model.gen_buffer) == 128  # one round's worth by default
    assert model.reward_norm.count.item() == 2 * 128


def test_bc_warm_start_clones_before_the_first_rollout_in_the_demonstrations_scale(
    cartpole_demos,
):
    env = make_env(CARTPOLE_FIXED, num_envs=1, seed=0)
    expert = policy_from_string("scripted", env=env)
    env.close()

    def first_round(warm_start_epochs: int):
        generator_kwargs = {"n_steps": 64, "batch_size": 64, "n_epochs": 1}
        model = small(
            GAIL,
            cartpole_demos,
            generator_kwargs=generator_kwargs | {"normalize_observations": True},
            bc_warmstart_epochs=warm_start_epochs,
        )
        trainer().fit(model)
        rollout = model.last_batch.reshape(-1)
        expert_actions = expert(rollout.select("observation").clone())["action"]
        agreement = (rollout["action"] == expert_actions).float().mean().item()
        return agreement, model.generator.actor.obs_norm.count.item()

    cloned_agreement, cloned_count = first_round(20)
    cold_agreement, cold_count = first_round(0)
    # The first round's rollouts already come from the cloned policy.
    assert cloned_agreement > 0.9 > cold_agreement
    # The demonstrations are in the observation statistics the policy was cloned under.
    assert cold_count == 256
    assert cloned_count == cartpole_demos.numel() + 256


def test_return_based_reward_scaling_follows_discounted_returns(cartpole_demos):
    model = small(GAIL, cartpole_demos, normalize_reward="return")
    gamma = model.generator.hparams.gamma
    g = torch.Generator().manual_seed(0)
    reward = torch.rand(4, 6, generator=g)
    done = torch.zeros(4, 6, dtype=torch.bool)
    done[1, 2] = True
    model._update_reward_statistics(reward, done)
    expected = []
    for i in range(4):
        running = 0.0
        for t in range(6):
            running = gamma * running + float(reward[i, t])
            expected.append(running)
            if done[i, t]:
                running = 0.0
    expected = torch.tensor(expected, dtype=torch.float64)
    assert torch.allclose(model.reward_norm.var, expected.var(correction=0), rtol=1e-6)
    assert model._return_carry[1].item() == pytest.approx(expected[11].item() - 0, rel=1e-5)
    # the generator's reward is divided by the return's std, not centred
    batch = transitions(5, 0)
    raw = model.disc_loss.generator_reward(batch)
    scaled = model.generator_reward(batch)
    assert torch.allclose(scaled, raw / model.reward_norm.var.sqrt().float(), rtol=1e-5)
    with pytest.raises(ValueError, match="normalize_reward"):
        small(GAIL, cartpole_demos, normalize_reward="sometimes")


def test_learned_and_true_returns_are_logged_when_episodes_end(cartpole_demos):
    model = GAIL(
        "CartPole-v1",
        demonstrations=cartpole_demos.exclude("episode").set("episode", cartpole_demos["episode"]),
        num_envs=4,
        total_frames=512,
        generator_kwargs={"n_steps": 64, "batch_size": 64, "n_epochs": 1},
        demo_batch_size=64,
        allow_variable_horizon=True,
    )
    t = trainer()
    t.fit(model)
    metrics = t.callback_metrics
    assert "episode/return" in metrics  # CartPole-v1 with a random policy: short episodes
    assert "episode/learned_return" in metrics
    assert metrics["episode/learned_return"].item() > 0  # softplus rewards


def test_variable_horizon_is_refused_unless_allowed(cartpole_demos):
    model = GAIL(
        "CartPole-v1",
        demonstrations=cartpole_demos,
        num_envs=4,
        total_frames=512,
        generator_kwargs={"n_steps": 64, "batch_size": 64, "n_epochs": 1},
        demo_batch_size=64,
    )
    with pytest.raises(TdimitationError, match="different lengths.*CartPoleFixed"):
        trainer().fit(model)


def test_variable_horizon_demonstrations_are_refused(cartpole_demos):
    env = make_env("CartPole-v1", num_envs=4, seed=0)
    demos = rollout(load_policy("random", env=env), env, min_episodes=4)
    env.close()
    model = small(GAIL, demos)
    with pytest.raises(TdimitationError, match="different lengths.*demonstrations"):
        trainer().fit(model)


def test_bad_input_gets_clear_errors(cartpole_demos):
    env = make_env("Pendulum-v1", num_envs=2, seed=0)
    pendulum = rollout(load_policy("random", env=env), env, min_episodes=2)
    env.close()
    with pytest.raises(SpaceMismatchError):
        trainer().fit(small(GAIL, pendulum))
    with pytest.raises(TrajectoryError, match="fewer than demo_batch_size"):
        trainer().fit(small(GAIL, cartpole_demos, demo_batch_size=100_000))
    with pytest.raises(TrajectoryError, match="no demonstrations"):
        trainer().fit(small(GAIL, None))
    with pytest.raises(ValueError, match="smaller than one collection batch"):
        small(GAIL, cartpole_demos, total_frames=64)
    with pytest.raises(ValueError, match="generator_kwargs may not set"):
        small(GAIL, cartpole_demos, generator_kwargs={"num_envs": 2})
    with pytest.raises(ValueError, match="unknown generator"):
        small(GAIL, cartpole_demos, generator="dqn")


def test_demonstrations_from_the_datamodule(tmp_path):
    model = small(GAIL, None)
    data = DemonstrationData(
        CARTPOLE_FIXED, expert="scripted", n_episodes=2, cache_dir=str(tmp_path)
    )
    trainer().fit(model, datamodule=data)
    assert model.frames == 256
    n = model.demonstrations.numel()
    assert n >= 1000 and n % 500 == 0  # whole fixed-horizon expert episodes


def test_airl_with_sac_on_pendulum_and_its_unshaped_reward(tmp_path):
    env = make_env("Pendulum-v1", num_envs=2, seed=0)
    demos = rollout(policy_from_string("scripted", env=env), env, min_episodes=2)
    env.close()
    model = AIRL(
        "Pendulum-v1",
        demonstrations=demos,
        generator="sac",
        generator_kwargs={
            "frames_per_batch": 64,
            "batch_size": 32,
            "learning_starts": 64,
            "hidden_sizes": [16],
        },
        num_envs=2,
        total_frames=192,
        demo_batch_size=64,
        n_disc_updates_per_round=1,
    )
    assert isinstance(model.reward_net, ShapedRewardNet)
    assert model.reward_net.discount == pytest.approx(0.99)  # SAC's gamma
    t = trainer(default_root_dir=str(tmp_path))
    t.fit(model)
    assert model.frames == 192
    assert len(model.generator.buffer) == 192  # SAC's own replay buffer got every round
    assert model.learned_reward() is model.reward_net.base


def test_checkpoint_restores_everything(cartpole_demos, tmp_path):
    torch.manual_seed(0)
    model = small(AIRL, cartpole_demos, total_frames=384)
    t = trainer(max_steps=-1)
    t.fit(model)
    path = tmp_path / "run.ckpt"
    t.save_checkpoint(path)

    restored = small(AIRL, cartpole_demos, total_frames=512)
    state = torch.load(path, weights_only=True)
    restored.on_load_checkpoint(state)
    restored.load_state_dict(state["state_dict"])
    assert restored.frames == 384 and restored.generator.frames == 384
    for a, b in zip(model.state_dict().values(), restored.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert len(restored.gen_buffer) == len(model.gen_buffer)
    assert torch.equal(restored.gen_buffer[:]["observation"], model.gen_buffer[:]["observation"])
    # both optimizers (generator, discriminator) are in the checkpoint
    assert len(state["optimizer_states"]) == 2
    # the reward net can be loaded from the checkpoint, shaped or not
    shaped = load_reward("tdimitation", path)
    unshaped = load_reward("unshaped", path)
    batch = transitions(5, 0)
    args = DiscriminatorLoss(shaped).inputs(batch)
    model.reward_net.eval()  # in training mode, reward() would move the input statistics
    assert torch.allclose(shaped.reward(*args), model.reward_net.reward(*args))
    assert torch.allclose(unshaped.reward(*args), model.reward_net.base.reward(*args))
    # the policy is exported as usual
    policy = load_policy("tdimitation", str(path))
    assert isinstance(policy, CategoricalActor)

    # resuming continues the run to the new budget (the saved run had finished its epoch)
    resumed = small(AIRL, cartpole_demos, total_frames=512)
    trainer(max_epochs=2).fit(resumed, ckpt_path=str(path))
    assert resumed.frames == 512
