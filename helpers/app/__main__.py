"""``python -m helpers.app outputs/<run_name>``: browse a finished run and try its model, in a local web app."""

from __future__ import annotations

import argparse
import sys

from helpers.app.run_view import MAX_UPLOAD_BYTES, RunFolderError, RunView
from helpers.runtime.console import quiet_known_warnings

LOCALHOST = "127.0.0.1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: a run folder, and where to listen."""
    parser = argparse.ArgumentParser(prog="python -m helpers.app", description="Browse a finished run's test images and errors; try its model.")
    parser.add_argument("folder", help="a finished run folder, outputs/<run_name>")
    parser.add_argument("--host", default=LOCALHOST, help=f"address to listen on (default {LOCALHOST}: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    return parser.parse_args(sys.argv[1:] if argv is None else argv)


def main(argv: list[str] | None = None) -> None:
    """Open the run folder, then serve the app until interrupted."""
    args = parse_args(argv)
    try:
        view = RunView(args.folder)
    except RunFolderError as error:
        raise SystemExit(str(error)) from error
    from helpers.app.ui import build_app
    from helpers.detect import Detector

    if args.host != LOCALHOST:
        print(f"listening on {args.host}: anyone who reaches this machine on port {args.port} can browse the run and run its model")
    app = build_app(view, lambda: Detector.from_folder(view.root))
    app.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD_BYTES, share=False, show_error=True)


if __name__ == "__main__":
    quiet_known_warnings()
    main()
