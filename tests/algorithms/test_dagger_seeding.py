"""DAgger and BC runs repeat from their seed, whatever the global RNG's state."""

import random

import lightning as L
import numpy as np
import torch

from tdimitation.algorithms import BC
from tdimitation.algorithms.dagger import DAgger


def _params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.policy.parameters()])


def test_bc_initial_weights_come_from_the_seed():
    torch.manual_seed(123)
    a = BC("CartPole-v1", n_epochs=1, seed=4)
    torch.manual_seed(456)
    b = BC("CartPole-v1", n_epochs=1, seed=4)
    c = BC("CartPole-v1", n_epochs=1, seed=5)
    assert torch.equal(_params(a), _params(b)) and not torch.equal(_params(a), _params(c))


def test_dagger_runs_repeat():
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        model = DAgger(
            "CartPole-v1",
            expert="scripted",
            n_rounds=2,
            rampdown_rounds=2,  # β = 0.5 in round 1: mixing draws random numbers
            num_envs=2,
            bc_epochs=1,
            batch_size=32,
            min_transitions=100,
            seed=0,
        )
        L.Trainer(
            max_epochs=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        ).fit(model)
        runs.append((_params(model), model.buffer[:]["observation"].clone()))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


class _DrawFromGlobalRNGs(L.Callback):
    """Draws from torch's, numpy's and Python's global RNGs after every round."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        torch.rand(1000)
        np.random.rand(1000)
        random.random()


def _dagger_run(callbacks=(), **kwargs):
    model = DAgger(
        "CartPole-v1",
        expert="scripted",
        n_rounds=3,
        rampdown_rounds=3,  # β = 1, 2/3, 1/3: the mixture and the learner both draw
        num_envs=2,
        bc_epochs=1,
        batch_size=32,
        min_transitions=200,
        seed=0,
        **kwargs,
    )
    L.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=list(callbacks),
    ).fit(model)
    return model


def test_global_rng_draws_between_rounds_do_not_change_dagger():
    plain = _dagger_run()
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    disturbed = _dagger_run(callbacks=[_DrawFromGlobalRNGs()])
    assert torch.equal(_params(plain), _params(disturbed))
    a, b = plain.trajectories(), disturbed.trajectories()
    for key in ("observation", "action", "executed_action"):
        assert torch.equal(a[key], b[key]), key
    # The learner did act (β < 1), so its sampling was exercised, not only the expert's.
    assert (a["executed_action"] != a["action"]).any()


def test_dagger_leaves_the_global_rngs_alone():
    states = []
    for run in (False, True):
        torch.manual_seed(7)
        np.random.seed(7)
        random.seed(7)
        if run:
            _dagger_run()
        states.append((torch.rand(3), np.random.rand(3), random.random()))
    assert torch.equal(states[0][0], states[1][0])
    assert np.array_equal(states[0][1], states[1][1]) and states[0][2] == states[1][2]
