"""Every shipped recipe parses with `tdimitation fit` and builds its module (no training)."""

import importlib.util
import sys
from pathlib import Path

import gymnasium as gym
import pytest
import yaml

from tdimitation.fit import _make_cli

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))


def _needs_missing_mujoco(recipe: Path) -> bool:
    """The recipe's env is a gymnasium MuJoCo env and mujoco is not installed."""
    if importlib.util.find_spec("mujoco") is not None:
        return False
    env_id = yaml.safe_load(recipe.read_text())["model"]["init_args"].get("env_id")
    spec = gym.registry.get(env_id)
    return spec is not None and "mujoco" in str(spec.entry_point)


def test_recipes_exist():
    assert len(RECIPES) >= 10


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_builds(recipe, monkeypatch):
    if _needs_missing_mujoco(recipe):
        pytest.skip("needs MuJoCo (pip install 'gymnasium[mujoco]')")
    monkeypatch.setenv("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    monkeypatch.setattr(sys, "argv", ["tdimitation"])  # as fit_main does
    cli = _make_cli(["--config", str(recipe)])
    assert cli.model is not None and cli.trainer.max_epochs == 1
    assert hasattr(cli.model, "export_policy")
    if "data" in cli.config and cli.config.data is not None:
        assert cli.datamodule is not None
    if hasattr(cli.model, "generator"):
        # The generator records its own hyperparameters, not the CLI's for the outer module.
        assert "env_id" in cli.model.generator.hparams
        assert "demo_batch_size" not in cli.model.generator.hparams
        cli.model.configure_optimizers()
