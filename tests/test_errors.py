"""Every error a user can cause is a ValueError or OSError subclass, never the bare base."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import tdimitation
from tdimitation import errors

PACKAGE = Path(tdimitation.__file__).parent


def test_every_error_class_is_a_value_or_os_error():
    classes = [
        obj
        for _, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, errors.TdimitationError) and obj is not errors.TdimitationError
    ]
    assert len(classes) >= 5
    for cls in classes:
        assert issubclass(cls, (ValueError, OSError)), cls


#: Python's own protocols answer with TypeError (``len()`` of an endless collector).
PROTOCOL_METHODS = {"__len__", "__iter__", "__hash__"}


def _raised_names(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    skipped = {
        id(node)
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef) and fn.name in PROTOCOL_METHODS
        for node in ast.walk(fn)
    }
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(target, ast.Name):
                found.append((node.lineno, target.id))
            elif isinstance(target, ast.Attribute):
                found.append((node.lineno, target.attr))
    return found


def test_nothing_raises_the_base_class_or_a_non_value_error():
    # TypeError/KeyError/RuntimeError for bad user input would escape the CLI's one-line
    # handler and `except ValueError` clauses alike.
    forbidden = {"TdimitationError", "Exception", "TypeError", "KeyError", "RuntimeError"}
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, name in _raised_names(tree):
            if name in forbidden:
                offenders.append(f"{path.relative_to(PACKAGE)}:{line} raises {name}")
    assert not offenders, offenders
