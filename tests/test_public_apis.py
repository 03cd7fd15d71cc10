"""The package uses only public APIs of Lightning and torch.optim.

An AST scan: no import of an underscored name from ``lightning`` or ``torch.optim``, and no
``._name`` attribute access where ``_name`` is a private attribute of Lightning's modules,
trainer, optimizer wrapper, callbacks or torch's optimizers (so code like
``trainer._logger_connector`` or ``optimizer._optimizer_step_pre_hooks`` fails here).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer

import tdimitation

PACKAGE = Path(tdimitation.__file__).parent


def _private_names() -> set[str]:
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.Adam(model.parameters())
    objects = [
        L.LightningModule(),
        L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False),
        L.Callback(),
        L.LightningDataModule(),
        optimizer,
        LightningOptimizer(optimizer),
        importlib.import_module("torch.optim.optimizer"),
    ]
    names = set()
    for obj in objects:
        names |= {n for n in dir(obj) if n.startswith("_") and not n.startswith("__")}
        names |= {n for n in getattr(obj, "__dict__", {}) if n.startswith("_") and n[1:2] != "_"}
    # torch.nn.Module's own privates (_parameters, _modules, ...) are not Lightning's; the
    # package's modules legitimately define attributes of their own with leading underscores.
    module_privates = {n for n in dir(torch.nn.Module()) if n.startswith("_")}
    module_privates |= set(vars(torch.nn.Module()))
    return names - module_privates


def test_no_private_lightning_or_optimizer_api():
    private = _private_names()
    assert {"_logger_connector", "_optimizer_step_pre_hooks", "_trainer"} <= private
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(PACKAGE)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module.split(".")[0] == "lightning" or node.module.startswith(
                    "torch.optim"
                ):
                    for alias in node.names:
                        if alias.name.startswith("_"):
                            offenders.append(f"{where}:{node.lineno} imports {alias.name}")
            if isinstance(node, ast.Attribute) and node.attr in private:
                offenders.append(f"{where}:{node.lineno} uses .{node.attr}")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr", "setattr")
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in private
            ):
                offenders.append(
                    f"{where}:{node.lineno} {node.func.id}(..., {node.args[1].value!r})"
                )
    assert not offenders, offenders
