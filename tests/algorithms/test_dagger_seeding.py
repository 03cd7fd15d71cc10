"""DAgger and BC runs repeat from their seed, whatever the global RNG's state."""

import lightning as L
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
