import importlib.util
import json

import pytest
from mlflow import MlflowClient
from PIL import Image

from tdimitation.cli import main
from tdimitation.envs import make_env
from tdimitation.errors import TdimitationError
from tdimitation.evaluation import evaluate_policy, record_video
from tdimitation.policies import ZeroPolicy, policy_from_string

ANCHOR_NAME = "expert_models__cartpole_0__policies__final__model.zip"


@pytest.fixture
def headless(monkeypatch):
    # pygame's SDL complains about XDG_RUNTIME_DIR without a display unless told otherwise.
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")


def _stdout_json(capsys) -> dict:
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1, lines  # one JSON line, nothing else on stdout
    return json.loads(lines[0])


def test_scripted_cartpole_scores_500():
    env = make_env("CartPole-v1", num_envs=4, seed=0)
    try:
        stats = evaluate_policy(policy_from_string("scripted:cartpole"), env, 4)
    finally:
        env.close()
    assert stats["n_traj"] >= 4
    assert stats["return_mean"] == stats["return_median"] == stats["return_min"] == 500
    assert stats["len_mean"] == 500


def test_seeded_evaluation_is_reproducible():
    env = make_env("CartPole-v1", num_envs=2)
    try:
        policy = ZeroPolicy(env)
        first = evaluate_policy(policy, env, 6, seed=3)
        second = evaluate_policy(policy, env, 6, seed=3)
        other = evaluate_policy(policy, env, 6, seed=4)
    finally:
        env.close()
    assert first == second
    assert first != other
    assert first["return_max"] < 20  # pushing left topples the pole quickly


def test_record_video_writes_a_gif_of_whole_episodes(tmp_path, headless):
    env = make_env("CartPole-v1", render_mode="rgb_array", seed=0)
    env.reset()
    height, width, _ = env.render()[0].shape
    env.close()
    one = record_video("zero", "CartPole-v1", tmp_path / "one.gif", fps=20)
    two = record_video("zero", "CartPole-v1", tmp_path / "videos" / "two.gif", n_episodes=2)
    with Image.open(one) as gif:
        assert gif.format == "GIF" and gif.size == (width, height)
        n_one = gif.n_frames
        assert n_one > 1
        assert gif.info["duration"] >= 50  # 1000 / 20 fps, identical frames merged
    with Image.open(two) as gif:
        assert gif.n_frames > n_one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.gif", "videos"]  # no temp files


def test_record_video_rejects_unknown_types(tmp_path, headless):
    with pytest.raises(TdimitationError, match="unknown video type"):
        record_video("zero", "CartPole-v1", tmp_path / "video.txt")
    if importlib.util.find_spec("imageio") is None:
        with pytest.raises(TdimitationError, match="imageio"):
            record_video("zero", "CartPole-v1", tmp_path / "video.mp4")
        assert not (tmp_path / "video.mp4").exists()


def test_cli_eval_logs_metrics_params_and_video_to_mlflow(tmp_path, capsys, monkeypatch, headless):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    video = tmp_path / "zero.gif"
    argv = ["eval", "--env", "CartPole-v1", "--policy", "zero", "--episodes", "3"]
    argv += ["--num-envs", "2", "--seed", "1", "--video", str(video), "--mlflow"]
    argv += ["--experiment", "eval-test", "--data-dir", str(tmp_path)]
    assert main(argv) == 0
    stats = _stdout_json(capsys)
    assert stats["n_traj"] >= 3 and stats["return_mean"] < 20
    with Image.open(video) as gif:
        assert gif.n_frames > 1

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("eval-test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["env"] == "CartPole-v1" and params["policy"] == "zero"
    assert params["episodes"] == "3" and params["seed"] == "1"
    assert params["deterministic"] == "True"
    metrics = run.data.metrics
    assert metrics["eval/return_mean"] == pytest.approx(stats["return_mean"])
    assert metrics["eval/n_traj"] == stats["n_traj"]
    assert {"eval/return_std", "eval/len_mean", "eval/return_median"} <= set(metrics)
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["zero.gif"]


def test_cli_eval_samples_actions_from_its_seed(tmp_path, capsys):
    from tdimitation.policies import save_policy
    from tdimitation.rl.ppo import PPO

    untrained = PPO("Pendulum-v1", num_envs=1, n_steps=64, batch_size=64, total_frames=64)
    policy = f"tdimitation:{save_policy(untrained.export_policy(), tmp_path / 'p.pt')}"
    argv = ["eval", "--env", "Pendulum-v1", "--policy", policy, "--episodes", "2"]
    returns = []
    for extra in (["--stochastic"], ["--stochastic"], []):
        assert main([*argv, "--seed", "3", *extra]) == 0
        returns.append(_stdout_json(capsys)["return_mean"])
    sampled, again, greedy = returns
    assert sampled == again  # the same seed draws the same actions
    assert sampled != greedy


def test_cli_eval_sb3_anchor_expert(anchors, capsys):
    policy = f"sb3-ppo:{anchors / ANCHOR_NAME}"
    assert main(["eval", "--env", "CartPole-v1", "--policy", policy]) == 0
    stats = _stdout_json(capsys)
    assert stats["n_traj"] >= 20
    assert stats["return_mean"] >= 475


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--env", "CartPole-v1", "--policy", "nonsense"], "unknown policy kind"),
        (["--env", "Pendulum-v1", "--policy", "sb3-ppo:/no/such/model.zip"], "does not exist"),
        (["--env", "CartPole-v1", "--policy", "zero", "--episodes", "0"], "positive"),
        (["--env", "CartPole-v1", "--policy", "zero", "--video", "v.txt"], "unknown video type"),
    ],
)
def test_cli_eval_errors_exit_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["eval", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err and len(captured.err.strip().splitlines()) == 1


def test_cli_eval_space_mismatch(anchors, capsys):
    policy = f"sb3-ppo:{anchors / ANCHOR_NAME}"
    assert main(["eval", "--env", "Pendulum-v1", "--policy", policy]) == 2
    assert "observations of shape" in capsys.readouterr().err
