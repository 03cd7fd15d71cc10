"""Same seed, same result: every algorithm run twice gives identical parameters.

The second run of each pair is disturbed the way real runs are: torch's, numpy's and
Python's global RNGs are drawn from between rounds (as a user's callback or another
library would) and the policy is evaluated, stochastically, in the middle of training.
None of it may change what the run learns.
"""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import pytest
import torch

from tdimitation.algorithms import AIRL, BC, GAIL, DAgger, DemonstrationData
from tdimitation.data import rollout
from tdimitation.envs import make_env
from tdimitation.evaluation import evaluate_policy
from tdimitation.policies import policy_from_string
from tdimitation.rl import DQN, PPO, SAC
from tests.helpers import quiet_trainer


class Disturb(L.Callback):
    """Draw from every global RNG and evaluate the policy stochastically after each round."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        torch.rand(1000)
        np.random.rand(1000)
        random.random()
        if hasattr(pl_module, "export_policy"):
            env = pl_module.make_env(num_envs=2, seed=123)
            try:
                evaluate_policy(pl_module.export_policy(), env, 2, deterministic=False)
            finally:
                env.close()


@pytest.fixture(scope="module")
def demos():
    env = make_env("tdimitation/CartPoleFixed-v1", num_envs=4, seed=0)
    trajectories = rollout(policy_from_string("scripted", env=env), env, min_episodes=4)
    env.close()
    return trajectories


def _state(model: L.LightningModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _fit_twice(build, fit_kwargs=dict):
    states = []
    for callbacks in ([], [Disturb()]):
        # Different global RNG states before each run: nothing may depend on them.
        torch.manual_seed(len(states) * 17 + 5)
        model = build()
        quiet_trainer(callbacks).fit(model, **fit_kwargs())
        states.append(_state(model))
    first, second = states
    assert first.keys() == second.keys()
    differing = [k for k in first if not torch.equal(first[k], second[k])]
    assert not differing, f"parameters differ between two runs of one seed: {differing[:5]}"
    return first


BUILDERS = {
    "ppo": lambda: PPO(
        "CartPole-v1", num_envs=4, n_steps=64, total_frames=768, batch_size=64, n_epochs=2
    ),
    "sac": lambda: SAC(
        "Pendulum-v1",
        num_envs=2,
        frames_per_batch=64,
        total_frames=384,
        learning_starts=128,
        batch_size=32,
        hidden_sizes=(16, 16),
    ),
    "dqn": lambda: DQN(
        "CartPole-v1",
        num_envs=2,
        frames_per_batch=64,
        total_frames=512,
        learning_starts=128,
        batch_size=32,
        hidden_sizes=(16, 16),
    ),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_rl_runs_repeat(name):
    _fit_twice(BUILDERS[name])


@pytest.mark.parametrize("cls", [GAIL, AIRL])
def test_adversarial_runs_repeat(cls, demos):
    def build():
        return cls(
            "tdimitation/CartPoleFixed-v1",
            demonstrations=demos,
            generator_kwargs={"n_steps": 64, "batch_size": 64, "n_epochs": 2},
            num_envs=4,
            total_frames=768,
            demo_batch_size=64,
            n_disc_updates_per_round=2,
            gradient_penalty=1.0,
            bc_warmstart_epochs=1,
        )

    _fit_twice(build)


def test_bc_runs_repeat(demos):
    env_id = "tdimitation/CartPoleFixed-v1"
    _fit_twice(
        lambda: BC(env_id, n_epochs=2, eval_every_n_epochs=1),
        lambda: {"datamodule": DemonstrationData(env_id, trajectories=demos)},
    )


def test_dagger_runs_repeat():
    def build():
        return DAgger(
            "tdimitation/CartPoleFixed-v1",
            expert="scripted",
            n_rounds=2,
            rampdown_rounds=2,
            num_envs=2,
            bc_epochs=1,
            batch_size=32,
            seed=3,
        )

    _fit_twice(build)
