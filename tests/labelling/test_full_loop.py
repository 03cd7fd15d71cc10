"""The full loop: a preference run on fixed-horizon CartPole whose labels come from a
scripted "person", an HTTP client of the labelling server answering by the true return
while the run trains; the agent beats the untrained policy (permutation test)."""

from __future__ import annotations

import threading

import torch

from tdimitation.algorithms import PreferenceComparisons
from tdimitation.rng import make_rng, randperm
from tests.helpers import quiet_trainer
from tests.labelling.helpers import CARTPOLE_FIXED, gatherer, live_server, person


def permutation_p_value(trained: torch.Tensor, untrained: torch.Tensor, n: int = 10_000) -> float:
    """One-sided p-value of mean(trained) > mean(untrained) under label permutation."""
    pooled = torch.cat([trained, untrained]).double()
    k = trained.numel()
    observed = trained.double().mean() - untrained.double().mean()
    rng = make_rng(0)
    hits = 0
    for _ in range(n):
        perm = pooled[randperm(pooled.numel(), rng)]
        hits += int(perm[:k].mean() - perm[k:].mean() >= observed)
    return (hits + 1) / (n + 1)


def episode_returns(module, episodes: int = 16) -> torch.Tensor:
    env = module.make_env(num_envs=8, seed=123)
    try:
        from tdimitation.data.rollout import rollout
        from tdimitation.data.trajectory import episode_returns as returns

        return returns(
            rollout(
                module.export_policy(), env, min_episodes=episodes, deterministic=True, seed=123
            )
        )
    finally:
        env.close()


def test_people_label_while_the_agent_learns(tmp_path):
    options = dict(
        agent_kwargs=dict(
            n_steps=128,
            n_epochs=10,
            batch_size=256,
            learning_rate=1e-3,
            gamma=0.98,
            gae_lambda=0.8,
            hidden_sizes=[64, 64],
        ),
        num_envs=4,
        fixed_horizon=100,
        total_frames=512 * 40,
        seed=0,
        total_comparisons=60,
        num_iterations=4,
        initial_comparison_frac=0.25,
        fragment_length=20,
        reward_kwargs=dict(use_action=False, hidden_sizes=[32, 32]),
        reward_epochs=5,
        initial_epoch_multiplier=10,
        fragment_warning_threshold=0.0,
    )
    module = PreferenceComparisons(CARTPOLE_FIXED, **options)
    untrained = episode_returns(module)
    # Each update waits for every pair it published (no pair is left open), so the labels
    # each reward update sees do not depend on how fast the person answers.
    g = gatherer(tmp_path, min_answers=1000, session="cartpole", clip_scale=0.25)
    module.set_gatherer(g)
    token = g.store.add_labeller("scripted person")
    stop, answered = threading.Event(), []
    with live_server(g.store, tmp_path / "clips") as port:
        thread = threading.Thread(target=person, args=(port, token, g.store, stop, answered))
        thread.start()
        try:
            quiet_trainer().fit(module)
        finally:
            stop.set()
            thread.join(60)
    # Every answer the run took came through the page's API, none twice.
    assert len(answered) == len(set(answered)) == module.comparisons == 60
    assert len(module.dataset) == module.comparisons
    trained = episode_returns(module)
    p = permutation_p_value(trained, untrained)
    assert p < 0.05, (trained.mean(), untrained.mean(), p)
