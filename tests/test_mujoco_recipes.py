"""The MuJoCo benchmark's recipes each run one round of their algorithm.

The recipes read the benchmark's demonstrations and expert from the data directory; here
they get small stand-ins of the same kind (a random policy's episodes, saved as a dataset,
and a saved untrained policy as DAgger's expert), given the way a user overrides them.
"""

import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from tdimitation.data.rollout import rollout
from tdimitation.data.storage import load_trajectories, save_trajectories
from tdimitation.envs import make_env
from tdimitation.fit import _make_cli
from tdimitation.policies import RandomPolicy, save_policy
from tdimitation.rl.ppo import PPO

pytest.importorskip("mujoco")  # the mujoco extra; CI installs it with the dev extra

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
TASKS = {
    "ant": "tdimitation/AntFixed-v5",
    "halfcheetah": "tdimitation/HalfCheetahFixed-v5",
    "hopper": "tdimitation/HopperFixed-v5",
    "swimmer": "tdimitation/SwimmerFixed-v5",
    "walker2d": "tdimitation/Walker2dFixed-v5",
}
ALGORITHMS = ("ppo", "bc", "dagger", "gail", "airl")
# One round of each: a small budget in the algorithm's own unit.
ONE_ROUND = {
    "bc": ["--model.init_args.n_epochs", "1", "--model.init_args.eval_every_n_epochs", "0"],
    "dagger": ["--model.init_args.n_rounds", "1", "--model.init_args.bc_epochs", "1"],
}


def _round(recipe: Path) -> str:
    """Frames of one round of an online recipe: its sub-envs times its PPO steps each."""
    settings = yaml.safe_load(recipe.read_text())["model"]["init_args"]
    ppo = settings.get("generator_kwargs", settings)
    return str(settings["num_envs"] * ppo["n_steps"])


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """Per task: a dataset of three random episodes and a saved policy for DAgger to query."""
    root = tmp_path_factory.mktemp("mujoco")
    made = {}
    for task, env_id in TASKS.items():
        env = make_env(env_id, num_envs=2, seed=0)
        try:
            policy = RandomPolicy(env, seed=0)
            demos = rollout(policy, env, min_episodes=3)
        finally:
            env.close()
        save_trajectories(root / task, demos, env_id=env_id)
        expert = root / f"{task}_expert.pt"
        untrained = PPO(env_id, num_envs=1, n_steps=64, batch_size=64, total_frames=64)
        save_policy(untrained.export_policy(), expert)
        made[task] = (root / task, expert)
    return made


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("task", list(TASKS))
def test_mujoco_recipe_runs_one_round(task, algorithm, stand_ins, tmp_path, monkeypatch):
    demos, expert = stand_ins[task]
    monkeypatch.setenv("TDIMITATION_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    monkeypatch.setattr(sys, "argv", ["tdimitation"])  # as fit_main does
    recipe = RECIPES / algorithm / f"{task}_fixed.yaml"
    one_round = ONE_ROUND.get(algorithm) or ["--model.init_args.total_frames", _round(recipe)]
    argv = ["--config", str(recipe), *one_round]
    if algorithm == "dagger":
        argv += ["--model.init_args.expert", f"tdimitation:{expert}"]
    elif algorithm != "ppo":
        argv += ["--data.init_args.path", str(demos)]
    cli = _make_cli(argv)
    model = cli.model
    assert model.hparams.env_id == TASKS[task]
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit(model, datamodule=cli.datamodule)
    changed = any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert changed, "one round trained nothing"
    budget = model.training_budget()
    assert budget.done >= 1
    if algorithm in ("gail", "airl"):
        # The discriminator saw the given demonstrations' observations.
        assert load_trajectories(demos).numel() >= 3000
