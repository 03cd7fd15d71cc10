"""Every code block of docs/own-env.md runs, in order, and does what the page says.

Python blocks run in one namespace, in an empty directory that is the working directory
and on ``sys.path``; a block whose first line is ``# NAME.py`` (or a YAML block starting
``# NAME.yaml``) is written to that file instead; shell blocks hold ``tdimitation fit``
commands, run through the CLI's entry point with the MLflow store in the directory.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from mlflow import MlflowClient

from tdimitation.cli import main
from tdimitation.envs import make_env
from tdimitation.evaluation import MAX_EVAL_ENVS, evaluate_policy
from tdimitation.policies import load_policy

DOC = Path(__file__).resolve().parents[1] / "docs" / "own-env.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.S | re.M)
FILE_HEADER = re.compile(r"#\s*(\S+\.(?:py|ya?ml))\s*$")


def doc_blocks() -> list[tuple[str, str]]:
    return [(lang, body) for lang, body in BLOCK.findall(DOC.read_text())]


def run_command(line: str) -> int:
    words = shlex.split(line)
    # "PYTHONPATH=. tdimitation ...": the directory is already on sys.path.
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        assert words.pop(0) == "PYTHONPATH=.", f"unexpected environment setting in {line!r}"
    assert words[:2] == ["tdimitation", "fit"], f"the doc's shell blocks run fits: {line!r}"
    return main(words[1:])


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """Run the page once; yield its namespace, directory, MLflow client and block counts."""
    workdir = tmp_path_factory.mktemp("own_env")
    saved_cwd, saved_path = os.getcwd(), list(sys.path)
    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "TDIMITATION_DATA_DIR")}
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ["TDIMITATION_DATA_DIR"] = str(workdir / "tdimitation_data")
    os.chdir(workdir)
    sys.path.insert(0, str(workdir))
    namespace: dict = {"__name__": "own_env_doc"}
    counts = {"files": 0, "python": 0, "commands": 0}
    try:
        for index, (lang, body) in enumerate(doc_blocks()):
            header = FILE_HEADER.fullmatch(body.splitlines()[0])
            if header:
                (workdir / header.group(1)).write_text(body)
                counts["files"] += 1
            elif lang == "python":
                exec(compile(body, f"{DOC.name} block {index}", "exec"), namespace)
                counts["python"] += 1
            elif lang == "bash":
                for line in filter(None, (s.strip() for s in body.splitlines())):
                    assert run_command(line) == 0
                    counts["commands"] += 1
            else:
                raise AssertionError(f"block {index} ({lang}) is neither run nor a file")
        yield namespace, workdir, MlflowClient(uri), counts
    finally:
        os.chdir(saved_cwd)
        sys.path[:] = saved_path
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        gym.registry.pop("Reach-v0", None)
        sys.modules.pop("reach_env", None)


def test_every_block_ran(page):
    *_, counts = page
    assert counts == {"files": 3, "python": 7, "commands": 2}


def test_names_build_the_env_and_a_misspelt_one_is_one_clear_line(page):
    ns, *_ = page
    assert ns["env"].env_id == "reach_env:ReachEnv" and ns["env"].num_envs == 4
    assert ns["registered"].env_id == "Reach-v0"
    assert ns["message"].startswith("environment 'reach_env:ReachEnvv': module 'reach_env' has")
    assert "\n" not in ns["message"]


def test_the_function_expert_is_far_better_than_random(page):
    ns, *_ = page
    expert, random = ns["expert_stats"]["return_mean"], ns["random_stats"]["return_mean"]
    assert -4.0 < expert < -1.5 and random < 5 * expert
    assert ns["expert_stats"]["len_max"] <= 20  # the bound the fixed horizon relies on


def test_bc_from_python_matches_the_expert(page):
    ns, workdir, *_ = page
    expert, bc = ns["expert_stats"]["return_mean"], ns["bc_stats"]["return_mean"]
    assert bc == pytest.approx(expert, abs=0.05 * abs(expert))
    assert (workdir / "reach_bc.gif").stat().st_size > 0


def test_gail_trains_on_fixed_horizon_episodes(page):
    ns, *_ = page
    assert torch.equal(ns["episode_lengths"](ns["fixed_demos"]).unique(), torch.tensor([30]))
    assert ns["gail"].frames == 16_384
    env = ns["gail_eval_env"]
    random = evaluate_policy(ns["RandomPolicy"](env, seed=0), env, 20, seed=123)
    expert = evaluate_policy(ns["expert_policy"], env, 20, seed=123)
    # A small budget: not the expert yet, but well over halfway from random to the expert.
    score = (ns["gail_stats"]["return_mean"] - random["return_mean"]) / (
        expert["return_mean"] - random["return_mean"]
    )
    assert score > 0.6


def _run(client: MlflowClient, experiment: str):
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    (run,) = client.search_runs([found.experiment_id])
    return run


def test_recipes_train_and_log_to_mlflow(page):
    ns, workdir, client, _ = page
    bc_run = _run(client, "reach-bc")
    assert bc_run.data.params["env_id"] == "reach_env:ReachEnv"
    # The fit's final evaluation: 50 episodes on a fresh env seeded 10,000 + seed, one
    # sub-env per episode up to MAX_EVAL_ENVS.
    eval_env = make_env("reach_env:ReachEnv", num_envs=min(50, MAX_EVAL_ENVS), seed=10_000)
    expert = evaluate_policy(ns["expert_policy"], eval_env, 50)["return_mean"]
    assert bc_run.data.metrics["eval/return_mean"] == pytest.approx(expert, abs=0.05 * abs(expert))
    gail_run = _run(client, "reach-gail")
    assert gail_run.data.metrics["frames"] == 4096
    assert gail_run.data.params["fixed_horizon"] == "30"
    artifacts = {a.path for a in client.list_artifacts(gail_run.info.run_id)}
    assert {"config.yaml", "checkpoints"} <= artifacts


def test_recipe_checkpoint_names_the_env_and_loads_weights_only(page):
    ns, workdir, *_ = page
    (ckpt,) = (workdir / "tdimitation_data" / "runs" / "reach-bc").glob("*/last.ckpt")
    state = torch.load(ckpt, weights_only=True)
    assert state["hyper_parameters"]["env_id"] == "reach_env:ReachEnv"
    env = make_env(state["hyper_parameters"]["env_id"], num_envs=8)
    policy = load_policy("tdimitation", ckpt, env=env)
    expert = evaluate_policy(ns["expert_policy"], env, 20, seed=7)["return_mean"]
    assert evaluate_policy(policy, env, 20, seed=7)["return_mean"] == pytest.approx(
        expert, abs=0.05 * abs(expert)
    )
