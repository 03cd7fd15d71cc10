"""Human preferences: a labelling web page whose answers train the preference reward model.

:class:`HumanGatherer` publishes preference queries (pairs and their clips) to a
:class:`LabelStore`; ``tdimitation label serve`` shows them to labellers in a browser
(:func:`make_app`); answers flow back to training as they arrive. Needs the ``label``
extra (Starlette, uvicorn, SQLAlchemy). See docs/human-preferences.md.
"""

from importlib import import_module

# Imported on first use: `tdimitation --help` must not load the web and database stacks.
_WHERE = {
    "make_app": "app",
    "serve": "app",
    "ClipRenderer": "clips",
    "export_csv": "export",
    "export_dataset": "export",
    "HumanGatherer": "gatherer",
    "default_clip_dir": "gatherer",
    "default_database": "gatherer",
    "CHOICES": "store",
    "AnswerRejected": "store",
    "LabelStore": "store",
}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"tdimitation.labelling.{_WHERE[name]}"), name)


__all__ = [
    "CHOICES",
    "AnswerRejected",
    "ClipRenderer",
    "HumanGatherer",
    "LabelStore",
    "default_clip_dir",
    "default_database",
    "export_csv",
    "export_dataset",
    "make_app",
    "serve",
]
