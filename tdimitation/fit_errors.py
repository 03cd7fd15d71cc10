"""One-line messages for what goes wrong before ``tdimitation fit`` trains.

LightningCLI (jsonargparse) reports a bad recipe as a usage dump or a chain of nested
"does not validate against any of the Union subtypes" errors, and a failing constructor as
a traceback. These functions turn each into one :class:`~tdimitation.errors.FitConfigError`
line naming the key and the fix, with "did you mean" for misspelt keys (compared against
the parser's keys and the algorithm's constructor arguments).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tdimitation.errors import FitConfigError, TdimitationError

#: The recipe sections whose values are a class path and its constructor arguments.
CLASS_SECTIONS = ("model", "data")
EXAMPLE_RECIPE = "recipes/bc/cartpole.yaml"


def normalise_flags(argv: Sequence[str]) -> list[str]:
    """Accept ``--ckpt-path``/``--run.data-dir`` for ``--ckpt_path``/``--run.data_dir``.

    Every option of ``fit`` is a recipe key (a Python name), so a dash in an option name can
    only mean an underscore. Values (tokens not starting with ``--``) are left alone.
    """
    out = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            name, sep, value = arg[2:].partition("=")
            arg = "--" + name.replace("-", "_") + sep + value
        out.append(arg)
    return out


def config_paths(argv: Sequence[str]) -> list[str]:
    """The files given with ``--config PATH``, ``-c PATH`` or ``--config=PATH``."""
    paths = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            paths.append(argv[i + 1])
        elif arg.startswith("--config="):
            paths.append(arg.split("=", 1)[1])
    return paths


def check_recipe_files(argv: Sequence[str]) -> None:
    """A recipe is given, exists and is valid YAML (with the line of a syntax error)."""
    import yaml

    paths = config_paths(argv)
    asks_help = any(a in ("-h", "--help") or a.startswith("--print_config") for a in argv)
    if not paths and not asks_help and not any(a.startswith("--model") for a in argv):
        raise FitConfigError(
            f"no recipe given: pass --config RECIPE.yaml (for example --config {EXAMPLE_RECIPE}; "
            "the recipes/ directory holds one per algorithm and env)"
        )
    for path in paths:
        if not Path(path).is_file():
            raise FitConfigError(f"recipe {path} does not exist; pass an existing YAML file")
        try:
            yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise FitConfigError(
                f"recipe {path} is not valid YAML{where}: {problem}; fix the file"
            ) from None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean X?"`` for the closest candidate, or ``""``."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _chain(err: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    return chain


def _class_arguments(class_path: str | None) -> set[str]:
    """Constructor argument names of ``class_path`` and of its bases (for ``**kwargs``)."""
    if not class_path or "." not in class_path:
        return set()
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return set()
    names: set[str] = set()
    for klass in inspect.getmro(cls):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            continue
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    names.discard("self")
    return names


def _class_path(section: str, argv: Sequence[str]) -> str | None:
    """The class path given for ``section`` on the command line or in the recipes."""
    import yaml

    for i, arg in enumerate(argv):
        if arg in (f"--{section}", f"--{section}.class_path") and i + 1 < len(argv):
            return argv[i + 1]
        for prefix in (f"--{section}=", f"--{section}.class_path="):
            if arg.startswith(prefix):
                return arg[len(prefix) :]
    for path in reversed(config_paths(argv)):
        try:
            recipe = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        entry = recipe.get(section) if isinstance(recipe, dict) else None
        if isinstance(entry, dict) and entry.get("class_path"):
            return str(entry["class_path"])
    return None


def known_flags(parser: Any, argv: Sequence[str]) -> set[str]:
    """Every recipe key ``fit`` accepts, as dotted paths (``model.init_args.total_frames``)."""
    keys = set(parser.get_defaults().keys())
    for section in CLASS_SECTIONS:
        keys |= {f"{section}.init_args.{a}" for a in _class_arguments(_class_path(section, argv))}
        keys |= {f"{section}.class_path", f"{section}.init_args"}
    return keys


def explain_parse_error(err: BaseException, parser: Any, argv: Sequence[str]) -> str:
    """One line for a jsonargparse parse failure."""
    chain = _chain(err)
    text = "\n".join(str(e) for e in chain)
    unrecognized = re.search(r"unrecognized arguments: (\S+)", text)
    if unrecognized:
        token = unrecognized.group(1)
        name = token[2:].split("=", 1)[0] if token.startswith("--") else token
        hint = did_you_mean(name, known_flags(parser, argv))
        return f"unknown option {token}{hint.replace('mean ', 'mean --')}"
    not_accepted = re.search(r"(?:Option|Key) '([^']+)' is not (?:accepted|expected)", text)
    keys = list(dict.fromkeys(re.findall(r'Parser key "([^"]+)"', text)))
    if not_accepted:
        name = not_accepted.group(1)
        section = keys[0] if keys and keys[0] in CLASS_SECTIONS else None
        if section is None:
            return (
                f"unknown key {name!r} in the recipe{did_you_mean(name, known_flags(parser, argv))}"
            )
        args = _class_arguments(_class_path(section, argv))
        flag = next(
            (
                a.split("=", 1)[0]
                for a in argv
                if a.startswith("--") and a.split("=")[0].endswith(f".{name}")
            ),
            f"{section}.init_args.{name} (in the recipe)",
        )
        class_path = _class_path(section, argv) or section
        return (
            f"unknown key {flag}: {class_path} takes no argument {name!r}{did_you_mean(name, args)}"
        )
    expected = re.search(r"Expected a <class '([^']+)'>\. Got value: (.*)", text)
    if expected and keys:
        path = keys
        if path[0] in CLASS_SECTIONS and len(path) > 1:
            path = [path[0], "init_args", *path[1:]]
        return (
            f"bad value for {'.'.join(path)}: expected {expected.group(1)}, "
            f"got {expected.group(2).strip()!r}"
        )
    no_class = re.search(r"module '([\w.]+)' has no attribute '(\w+)'", text)
    if no_class:
        module_name, name = no_class.groups()
        try:
            names = [n for n in dir(importlib.import_module(module_name)) if n[:1].isupper()]
        except ImportError:
            names = []
        hint = did_you_mean(name, names).replace("mean ", f"mean {module_name}.")
        return f"unknown class {module_name}.{name}{hint} (class paths: tdimitation --help)"
    return _condense(chain[-1])


def _condense(err: BaseException) -> str:
    """The meaningful lines of a nested jsonargparse message, joined into one."""
    noise = (
        "Does not validate",
        "Subtypes:",
        "Errors:",
        "Given value",
        "Expected a <class 'NoneType'>",
        "tip:",
    )
    kept = []
    for line in str(err).splitlines():
        line = line.strip().lstrip("-").strip()
        if line and not line.startswith(noise):
            kept.append(line)
    return " ".join(kept) or type(err).__name__


def explain_instantiation_error(err: BaseException, config: Any) -> str | None:
    """One line for a constructor (model, data, trainer) refusing its settings, or None.

    None for errors that are not about the user's settings (bugs keep their traceback).
    """
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    chain = _chain(err)
    for cause in chain:
        if isinstance(cause, TdimitationError):
            return str(cause).splitlines()[0]
    for cause in chain:
        if isinstance(cause, MisconfigurationException):
            accelerator = _get(config, "trainer.accelerator")
            message = str(cause).splitlines()[0]
            if accelerator not in (None, "auto", "cpu"):
                return (
                    f"accelerator {accelerator!r} is not available on this machine ({message}); "
                    "use --trainer.accelerator cpu (or auto)"
                )
            return f"trainer settings refused: {message}"
    root = chain[-1]
    if isinstance(root, ValueError | OSError):
        return _condense(root)
    return None


def _get(config: Any, key: str) -> Any:
    try:
        return config[key]
    except (KeyError, TypeError):
        return None
