"""MCE IRL: soft value iteration, occupancies, the tabular policy, the IRL loop, bad input."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from tdimitation.algorithms import (
    MCEIRL,
    TabularPolicy,
    TabularTensors,
    demonstration_occupancy,
    occupancy_measures,
    soft_value_iteration,
)
from tdimitation.data.rollout import rollout
from tdimitation.data.storage import save_trajectories
from tdimitation.envs import CliffWorld, TabularModel, make_env, random_mdp
from tdimitation.errors import MCEIRLError, TabularModelError
from tdimitation.rng import make_rng


def brute_force_soft_vi(T, r, horizon, discount):
    """Soft value iteration with explicit loops over states and actions, in float64."""
    S, A, _ = T.shape
    r_sa = r[:, None].repeat(A, 1) if r.ndim == 1 else r
    V = np.zeros((horizon, S))
    Q = np.zeros((horizon, S, A))
    for t in reversed(range(horizon)):
        for s in range(S):
            for a in range(A):
                future = 0.0
                if t + 1 < horizon:
                    future = sum(T[s, a, s2] * V[t + 1, s2] for s2 in range(S))
                Q[t, s, a] = r_sa[s, a] + discount * future
            V[t, s] = np.log(np.sum(np.exp(Q[t, s])))
    return V, Q, np.exp(Q - V[:, :, None])


def brute_force_occupancy(T, p0, pi, discount):
    H, S, A = pi.shape
    D = np.zeros((H + 1, S))
    D[0] = p0
    for t in range(H):
        for s in range(S):
            for a in range(A):
                D[t + 1] += D[t, s] * pi[t, s, a] * T[s, a]
    return D, sum(discount**t * D[t] for t in range(H + 1))


@pytest.mark.parametrize("discount", [1.0, 0.9])
@pytest.mark.parametrize("state_action", [False, True])
def test_soft_vi_and_occupancy_match_brute_force(discount, state_action):
    env = random_mdp(5, 3, 4, branch_factor=3, seed=1)
    rng = np.random.default_rng(0)
    r = rng.standard_normal((5, 3) if state_action else 5)
    V, Q, pi = soft_value_iteration(env, torch.as_tensor(r), discount)
    V_ref, Q_ref, pi_ref = brute_force_soft_vi(env.transition_matrix, r, 4, discount)
    np.testing.assert_allclose(V.numpy(), V_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(Q.numpy(), Q_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pi.numpy(), pi_ref, rtol=1e-12, atol=1e-12)
    D, total = occupancy_measures(env, pi, discount=discount)
    D_ref, total_ref = brute_force_occupancy(
        env.transition_matrix, env.initial_state_dist, pi_ref, discount
    )
    np.testing.assert_allclose(D.numpy(), D_ref, atol=1e-12)
    np.testing.assert_allclose(total.numpy(), total_ref, atol=1e-12)
    np.testing.assert_allclose(D.sum(1).numpy(), 1.0, atol=1e-12)
    assert total.sum().item() == pytest.approx(sum(discount**t for t in range(5)))


def test_sparse_and_dense_agree_and_discount_one_with_long_horizon():
    env = random_mdp(60, 4, 30, branch_factor=2, seed=3)
    sparse, dense = TabularTensors(env, sparse=True), TabularTensors(env, sparse=False)
    assert sparse.sparse and not dense.sparse
    r = torch.as_tensor(env.reward_matrix) * 20  # large returns: logsumexp must stay finite
    a, b = soft_value_iteration(sparse, r, 1.0), soft_value_iteration(dense, r, 1.0)
    assert torch.isfinite(a.V).all()
    torch.testing.assert_close(a.V, b.V, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(a.pi, b.pi, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        occupancy_measures(sparse, a.pi)[0], occupancy_measures(dense, a.pi)[0], atol=1e-12, rtol=0
    )


def test_tabular_policy_time_steps_and_modes():
    pi = torch.zeros(3, 2, 2)
    pi[0, :, 0] = 1.0  # step 0: action 0; steps 1 and 2: action 1
    pi[1:, :, 1] = 1.0
    policy = TabularPolicy(pi)
    td = lambda: TensorDict({"observation": torch.eye(2)[[0, 1]]}, batch_size=[2])  # noqa: E731
    assert [policy(td())["action"].tolist() for _ in range(4)] == [[0, 0], [1, 1], [1, 1], [0, 0]]
    policy.reset()
    assert policy(td())["action"].tolist() == [0, 0]
    # A new batch size starts new episodes; step_count, when given, is the time step.
    single = TensorDict({"observation": torch.eye(2)[[1]]}, batch_size=[1])
    assert policy(single)["action"].tolist() == [0]
    stepped = TensorDict(
        {"observation": torch.tensor([0, 1]), "step_count": torch.tensor([[2], [0]])},
        batch_size=[2],
    )
    assert policy(stepped)["action"].tolist() == [1, 0]
    mixed = TabularPolicy(torch.full((1, 1, 2), 0.5))
    mixed.rng = make_rng(0)
    one = TensorDict({"observation": torch.zeros(4000, 1)}, batch_size=[4000])
    assert abs(mixed(one)["action"].float().mean().item() - 0.5) < 0.05
    greedy = TabularPolicy(torch.tensor([[[0.4, 0.6]]]))
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        assert greedy(one.clone())["action"].eq(1).all()


def test_sampled_episodes_reproduce_the_occupancy():
    """The policy in `rollout` (XY observations) visits states as the occupancy says."""
    env_id = "tdimitation/CliffWorld7x4XY-v0"
    model = TabularTensors(CliffWorld(7, 4, 9, use_xy_obs=True))
    pi = soft_value_iteration(model).pi
    exact = occupancy_measures(model, pi)[1]
    policy = TabularPolicy(pi, model.observation_matrix)
    policy.rng = make_rng(0)
    env = make_env(env_id, 8, seed=0, env_kwargs={"expose_state": True})
    data = rollout(policy, env, min_episodes=3000)
    env.close()
    empirical = demonstration_occupancy(data, model, 1.0)
    assert (empirical - exact).abs().max().item() < 0.05
    # Transitions (no episode ids) of complete episodes give the same estimate.
    transitions = data.exclude("episode")
    torch.testing.assert_close(demonstration_occupancy(transitions, model, 1.0), empirical)


@pytest.mark.parametrize("discount", [1.0, 0.99])
def test_quality_learned_reward_reproduces_occupancy(discount):
    module = MCEIRL(
        "tdimitation/CliffWorld7x4-v0", "expert", discount=discount, lr=0.1, max_iter=4000
    )
    metrics = module.fit()
    assert metrics["converged"] == 1.0 and metrics["linf_delta"] < 1e-3
    # Recomputed independently from the learned reward.
    reward = module.state_rewards().detach()
    model = TabularTensors(CliffWorld(7, 4, 9))
    learned = occupancy_measures(model, reward=reward, discount=discount)[1]
    expert = occupancy_measures(model, discount=discount)[1]
    assert (learned - expert).abs().max().item() < 1e-3


def test_trainer_fit_and_policy_export():
    module = MCEIRL(
        "tdimitation/CliffWorld7x4-v0", "expert", hidden_sizes=[8], max_iter=5, log_every=2
    )
    module.num_threads = 0
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module)
    assert module.iteration == 5
    policy = module.export_policy()
    assert policy.pi.shape == (9, 28, 4)
    result = module.evaluate(4)
    assert np.isfinite(result["return_mean"]) and result["len_mean"] == 9


def _infinite():
    return TabularModel(np.full((2, 1, 2), 0.5), np.zeros(2), horizon=None)


def test_bad_input():
    with pytest.raises(TabularModelError, match="only finite-horizon.*continuous"):
        MCEIRL(_infinite, np.zeros(2))
    with pytest.raises(TabularModelError, match="out of scope"):
        MCEIRL("CartPole-v1", np.zeros(2))
    model = TabularTensors(CliffWorld(7, 4, 9, use_xy_obs=True))
    env = make_env("tdimitation/CliffWorld7x4XY-v0", 1, seed=0)
    data = rollout(
        TabularPolicy(soft_value_iteration(model).pi, model.observation_matrix), env, min_episodes=1
    )
    env.close()
    with pytest.raises(MCEIRLError, match="not one-hot.*occupancy measure"):
        demonstration_occupancy(data, model, 1.0)
    one_hot = TabularTensors(CliffWorld(7, 4, 9))
    transitions = TensorDict({"observation": torch.eye(28)[:5]}, batch_size=[5])
    with pytest.raises(MCEIRLError, match="discount"):
        MCEIRL("tdimitation/CliffWorld7x4-v0", transitions, discount=0.99)
    assert demonstration_occupancy(transitions, one_hot, 1.0).sum().item() == pytest.approx(10.0)
    with pytest.raises(MCEIRLError, match="occupancy measure"):
        MCEIRL("tdimitation/CliffWorld7x4-v0", np.zeros(5))
    with pytest.raises(MCEIRLError, match="discount"):
        MCEIRL("tdimitation/CliffWorld7x4-v0", discount=0.0)


def test_sampled_expert_and_dataset_demonstrations(tmp_path):
    env_id = "tdimitation/CliffWorld7x4-v0"
    sampled = MCEIRL(env_id, "expert", expert_episodes=400, discount=0.99, max_iter=3)
    exact = MCEIRL(env_id, "expert", discount=0.99)
    gap = (sampled.demo_occupancy - exact.demo_occupancy).abs().max().item()
    assert 0 < gap < 0.1  # an estimate from episodes, close to the exact measure
    data = sampled._sample(soft_value_iteration(sampled.model, None, 0.99).pi, 50)
    save_trajectories(tmp_path / "demos", data)
    from_path = MCEIRL(env_id, str(tmp_path / "demos"), discount=0.99)
    expected = demonstration_occupancy(data, sampled.model, 0.99)
    torch.testing.assert_close(from_path.demo_occupancy, expected)
    assert sampled.fit()["linf_delta"] > 0
