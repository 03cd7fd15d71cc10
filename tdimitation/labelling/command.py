"""``tdimitation label``: serve the labelling page, add labellers, show status, export."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tdimitation.errors import LabellingError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``label`` subcommand's actions and options."""
    p.add_argument(
        "--database",
        default=None,
        help="SQLAlchemy URL of the store (default: sqlite:///DATA_DIR/labelling/labels.db; "
        "e.g. postgresql://user@host/labels for a team)",
    )
    p.add_argument(
        "--data-dir", default=None, help="data directory (default $TDIMITATION_DATA_DIR)"
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    serve = actions.add_parser("serve", help="serve the labelling page")
    serve.add_argument("--clip-dir", default=None, help="clips (default DATA_DIR/labelling/clips)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    add = actions.add_parser("add-labeller", help="register a labeller and print their token")
    add.add_argument("name", help="the labeller's display name")
    actions.add_parser("status", help="per-labeller counts and agreement, as JSON")
    export = actions.add_parser("export", help="write the answers as CSV or a preference dataset")
    export.add_argument("path", help="output: a .csv file, or a dataset directory")
    export.add_argument(
        "--format", choices=("csv", "dataset"), default=None, help="default: by suffix"
    )
    export.add_argument("--session", default=None, help="only this session (needed for dataset)")


def run(args: argparse.Namespace) -> int:
    """Run one ``label`` action."""
    from tdimitation.labelling.gatherer import default_clip_dir, default_database
    from tdimitation.labelling.store import LabelStore

    database = args.database or default_database(args.data_dir)
    if args.action == "serve":
        from tdimitation.labelling.app import serve

        clips = Path(args.clip_dir) if args.clip_dir else default_clip_dir(args.data_dir)
        clips.mkdir(parents=True, exist_ok=True)
        print(
            f"labelling page on http://{args.host}:{args.port}/?token=TOKEN (store {database}); "
            "add labellers with: tdimitation label add-labeller NAME",
            file=sys.stderr,
            flush=True,
        )
        serve(database, clips, args.host, args.port)
        return 0
    store = LabelStore(database)
    try:
        if args.action == "add-labeller":
            token = store.add_labeller(args.name)
            print(token)
            print(f"labeller {args.name!r} added; their page: /?token={token}", file=sys.stderr)
        elif args.action == "status":
            print(json.dumps(store.status()))
        else:
            from tdimitation.labelling.export import export_csv, export_dataset

            fmt = args.format or ("csv" if args.path.endswith(".csv") else "dataset")
            if fmt == "csv":
                n = export_csv(store, args.path, args.session)
            else:
                if args.session is None:
                    raise LabellingError("exporting a dataset needs --session NAME")
                n = export_dataset(store, args.path, args.session)
            print(f"wrote {n} {'answers' if fmt == 'csv' else 'comparisons'} to {args.path}")
    finally:
        store.close()
    return 0
