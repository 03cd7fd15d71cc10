import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tdimitation.cli import main
from tdimitation.data.storage import load_trajectories, trajectory_metadata


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
