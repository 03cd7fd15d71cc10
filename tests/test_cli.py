import json
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import gymnasium as gym
import pytest
import torch

from tdimitation.cli import main
from tdimitation.data import load_minari
from tdimitation.data.storage import load_trajectories, save_trajectories, trajectory_metadata
from tests.data.minari_recording import record
from tests.data.test_storage import assert_same


def test_rollout_then_stats(tmp_path, capsys):
    out = tmp_path / "demos"
    rc = main(
        [
            "rollout",
            "--env",
            "CartPole-v1",
            "--policy",
            "scripted",
            "--episodes",
            "3",
            "--num-envs",
            "2",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert rc == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["n_traj"] >= 3 and stats["return_mean"] == 500
    assert trajectory_metadata(out)["env_id"] == "CartPole-v1"
    assert main(["stats", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_transitions"] == stats["n_transitions"]


def test_rollout_samples_actions_from_its_seed(tmp_path):
    from tdimitation.policies import save_policy
    from tdimitation.rl.ppo import PPO

    untrained = PPO("Pendulum-v1", num_envs=1, n_steps=64, batch_size=64, total_frames=64)
    policy = f"tdimitation:{save_policy(untrained.export_policy(), tmp_path / 'p.pt')}"
    actions = []
    for run, seed in enumerate(("3", "3", "4")):
        out = tmp_path / f"run{run}"
        argv = ["rollout", "--env", "Pendulum-v1", "--policy", policy, "--episodes", "1"]
        assert main([*argv, "--num-envs", "1", "--seed", seed, "--out", str(out)]) == 0
        actions.append(load_trajectories(out)["action"])
    first, again, other_seed = actions
    assert torch.equal(first, again)  # the same seed draws the same actions
    assert not torch.equal(first, other_seed)


def test_rollout_random_policy_on_fixed_horizon_env(tmp_path, capsys):
    out = tmp_path / "random"
    rc = main(
        [
            "rollout",
            "--env",
            "tdimitation/CartPoleFixed-v1",
            "--policy",
            "random",
            "--episodes",
            "2",
            "--num-envs",
            "2",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert rc == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["len_min"] == stats["len_max"] == 500
    assert stats["return_mean"] < 200


def test_convert_imitation_npz(tmp_path, capsys, anchors):
    out = tmp_path / "converted"
    src = anchors / "expert_models__cartpole_0__rollouts__final.npz"
    assert main(["convert", str(src), str(out), "--env-id", "CartPole-v1"]) == 0
    td = load_trajectories(out)
    assert td.shape[0] == 26964
    assert main(["stats", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["n_traj"] == 57 and stats["return_mean"] == pytest.approx(473.05, abs=0.01)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["stats", "/nonexistent/dataset"], "no trajectory file or dataset"),
        (["rollout", "--env", "CartPol-v1", "--out", "x"], "unknown environment id"),
        (["rollout", "--env", "CartPole-v1", "--episodes", "0", "--out", "x"], "positive"),
        (["rollout", "--env", "Acrobot-v1", "--out", "x"], "no scripted expert"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_corrupted_dataset_is_reported(tmp_path, capsys):
    out = tmp_path / "demos"
    assert (
        main(
            [
                "rollout",
                "--env",
                "CartPole-v1",
                "--episodes",
                "1",
                "--num-envs",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    arrow = next(out.glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:100])
    assert main(["stats", str(out)]) == 2
    assert "corrupted" in capsys.readouterr().err


def test_console_script_end_to_end(tmp_path):
    exe = shutil.which("tdimitation", path=str(Path(sys.executable).parent))
    assert exe, "the tdimitation console script is installed with the package"
    out = tmp_path / "mc"
    done = subprocess.run(
        [
            exe,
            "rollout",
            "--env",
            "MountainCar-v0",
            "--episodes",
            "2",
            "--num-envs",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "saved" in done.stdout and "return_mean" in done.stdout
    bad = subprocess.run(
        [exe, "stats", str(tmp_path / "missing")], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


# ------------------------------------------------------------------ convert: Minari


@pytest.fixture
def minari_cartpole(tmp_path, monkeypatch):
    """A CartPole Minari dataset recorded with minari.DataCollector, and what was collected."""
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    env = gym.make("CartPole-v1", max_episode_steps=15)
    _, expected = record(env, "test/cartpole/random-v0", episodes=4)
    return root / "test" / "cartpole" / "random-v0", expected


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_convert_minari_both_ways(minari_cartpole, tmp_path, capsys):
    path, expected = minari_cartpole
    ours = tmp_path / "ours"
    assert main(["convert", str(path), str(ours)]) == 0
    assert "converted 4 episodes (minari)" in capsys.readouterr().out
    assert_same(load_trajectories(ours), expected)
    meta = trajectory_metadata(ours)
    assert meta["env_id"] == "CartPole-v1"  # taken from the Minari dataset
    assert meta["metadata"]["minari_dataset_id"] == "test/cartpole/random-v0"

    # Back to Minari: the spaces come from the env id recorded in our dataset.
    assert main(["convert", str(ours), "minari:test/cartpole/back-v0"]) == 0
    assert_same(load_minari("test/cartpole/back-v0"), expected)
    again = tmp_path / "again"
    assert main(["convert", "minari:test/cartpole/back-v0", str(again)]) == 0
    assert_same(load_trajectories(again), expected)

    assert main(["convert", str(ours), "minari:test/cartpole/back-v0"]) == 2
    assert "already exists" in _one_line_error(capsys)
    assert main(["convert", str(ours), "minari:test/cartpole/back-v0", "--overwrite"]) == 0


def test_convert_minari_bad_input(minari_cartpole, tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("x")
    assert main(["convert", f"minari:{plain}", str(tmp_path / "o")]) == 2
    assert "is a directory but not a Minari dataset" in _one_line_error(capsys)
    assert main(["convert", "minari:test/nope-v0", str(tmp_path / "o")]) == 2
    assert "no Minari dataset 'test/nope-v0'" in _one_line_error(capsys)

    no_env = tmp_path / "no_env"
    assert main(["rollout", "--env", "CartPole-v1", "--episodes", "1", "--out", str(no_env)]) == 0
    capsys.readouterr()
    save_trajectories(no_env, load_trajectories(no_env))  # re-saved without an env id
    assert main(["convert", str(no_env), "minari:test/x-v0"]) == 2
    assert "pass --env-id" in _one_line_error(capsys)


def test_stats_of_an_empty_dataset_says_empty(tmp_path, capsys):
    empty = tmp_path / "empty"
    columns = {"obs": [], "acts": [], "infos": [], "terminal": [], "rews": []}
    datasets.Dataset.from_dict(columns).save_to_disk(str(empty))
    capsys.readouterr()
    assert main(["stats", str(empty)]) == 2
    err = _one_line_error(capsys)
    assert "is empty" in err and "corrupted" not in err
