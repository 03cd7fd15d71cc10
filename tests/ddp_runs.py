"""Small BC and PPO fits for the multi-process tests, run as a script or imported.

``python tests/ddp_runs.py {bc|bc-eval|ppo|ppo-statistics} DEVICES OUT_DIR [ARGS]`` fits
under Lightning's ``ddp`` strategy on ``DEVICES`` CPU processes (gloo) and writes, per process,
``OUT_DIR/rank<r>.pt``: the module's state dict, its counters and the last round's data.
Lightning's ``ddp`` launcher runs this file again for each extra process, which is why
the runs live in a script and not in a test function. The test module imports the same
builders, so the one-process runs it compares with are built identically.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch

from tdimitation.algorithms import BC, DemonstrationData
from tdimitation.callbacks import PeriodicCheckpoint
from tdimitation.data import rollout
from tdimitation.envs import make_env
from tdimitation.policies import policy_from_string
from tdimitation.rl import PPO

BC_ENV = "CartPole-v1"
BC_STEPS = 12
#: PPO: one round per process of NUM_ENVS * N_STEPS frames, one minibatch, one epoch.
NUM_ENVS, N_STEPS = 4, 32


def bc_demonstrations():
    """Deterministic scripted-expert episodes: the same in every process and run."""
    env = make_env(BC_ENV, num_envs=4, seed=0)
    try:
        expert = policy_from_string("scripted", env=env)
        return rollout(expert, env, min_episodes=4, deterministic=True)
    finally:
        env.close()


def bc_model(batch_size: int) -> BC:
    return BC(
        BC_ENV,
        n_batches=BC_STEPS,
        batch_size=batch_size,
        grad_accumulation=2,
        steps_per_call=4,
        hidden_sizes=(16, 16),
        seed=3,
    )


class CountingBC(BC):
    """BC that counts the evaluations its process runs."""

    evaluations = 0

    def evaluate(self, episodes: int | None = None) -> dict[str, float]:
        self.evaluations += 1
        return super().evaluate(episodes)


def bc_evaluating_model() -> CountingBC:
    """BC evaluating after each epoch of 5 batches (random episodes, about 160 rows)."""
    return CountingBC(
        BC_ENV,
        n_batches=BC_STEPS,
        batch_size=8,
        grad_accumulation=2,
        hidden_sizes=(16, 16),
        eval_every_n_epochs=1,
        eval_episodes=2,
        seed=3,
    )


def random_demonstrations():
    env = make_env(BC_ENV, num_envs=4, seed=0)
    try:
        return rollout(policy_from_string("random", env=env, seed=0), env, min_episodes=8)
    finally:
        env.close()


def ppo_model(processes: int) -> PPO:
    return PPO(
        "CartPole-v1",
        num_envs=NUM_ENVS,
        n_steps=N_STEPS,
        total_frames=processes * NUM_ENVS * N_STEPS,
        n_epochs=1,
        batch_size=NUM_ENVS * N_STEPS,
        max_grad_norm=None,
        hidden_sizes=(16, 16),
        normalize_observations=True,
        learning_rate=1e-2,
        seed=5,
    )


def ppo_with_statistics(total_frames: int) -> PPO:
    """PPO with both normalisers and an early stop on the KL that triggers at once."""
    return PPO(
        "CartPole-v1",
        num_envs=NUM_ENVS,
        n_steps=N_STEPS,
        total_frames=total_frames,
        n_epochs=4,
        batch_size=32,
        hidden_sizes=(16, 16),
        normalize_observations=True,
        normalize_rewards=True,
        target_kl=1e-6,
        seed=5,
    )


def trainer(devices: int, callbacks=()) -> L.Trainer:
    multi = {"strategy": "ddp", "devices": devices} if devices > 1 else {"devices": 1}
    return L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=list(callbacks),
        **multi,
    )


def main(argv: list[str]) -> None:
    algorithm, devices, out = argv[0], int(argv[1]), Path(argv[2])
    if algorithm == "bc":
        model = bc_model(int(argv[3]))
        data = DemonstrationData(BC_ENV, trajectories=bc_demonstrations())
        fit = trainer(devices, [PeriodicCheckpoint(out, every_n_rounds=1)])
        fit.fit(model, datamodule=data)
        extra = {"batches_done": model.batches_done}
    elif algorithm == "bc-eval":
        model = bc_evaluating_model()
        data = DemonstrationData(BC_ENV, trajectories=random_demonstrations())
        fit = trainer(devices)
        fit.fit(model, datamodule=data)
        epochs = model.batches_done // model._per_epoch
        extra = {"evaluations": model.evaluations, "epochs": epochs}
    elif algorithm == "ppo":
        model = ppo_model(devices)
        fit = trainer(devices)
        fit.fit(model)
        extra = {"frames": model.frames, "batch": model.last_batch.to_dict()}
    else:  # "ppo-statistics FRAMES [CHECKPOINT]": a fit, or the resumed rest of one
        model = ppo_with_statistics(int(argv[3]))
        fit = trainer(devices, [PeriodicCheckpoint(out, every_n_rounds=1)])
        fit.fit(model, ckpt_path=argv[4] if len(argv) > 4 else None)
        extra = {"frames": model.frames, "updates": model.optimizer_steps}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    record = {"state": state, "update_path": model.update_path, **extra}
    torch.save(record, out / f"rank{fit.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1:])
