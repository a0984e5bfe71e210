"""Ray job entrypoint: run the dataset job from a config (``ray job submit`` / ``nstray submit`` run this).

    python jobs/stylize_dataset.py CONFIG.yaml            # a path (or s3:// URI) to a job config
    python jobs/stylize_dataset.py --config-module NAME   # the config shipped by `nstray submit` (py_modules)

Inside a Ray job, ``ray.init()`` connects to the cluster the job runs on (``RAY_ADDRESS``).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path


def _config_path(args: argparse.Namespace) -> str:
    if args.config_module:
        spec = importlib.util.find_spec(args.config_module)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"config module {args.config_module!r} is not importable (was it shipped in py_modules?)")
        return str(Path(next(iter(spec.submodule_search_locations))) / "config.yaml")
    if not args.config:
        raise SystemExit("give a job config: CONFIG.yaml or --config-module NAME")
    return args.config


def main(argv: list[str] | None = None, *, kind: str = "images", doc: str | None = None) -> int:
    """Run the job; exit 0 when it completed (record failures are in errors.parquet), 1 when it could not run.
    ``kind``: the config kind this entrypoint runs (``jobs/stylize_video.py`` passes ``video``)."""
    parser = argparse.ArgumentParser(description=(doc or __doc__).splitlines()[0])
    parser.add_argument("config", nargs="?", help="job config YAML (path or s3:// URI)")
    parser.add_argument("--config-module", help="package holding config.yaml (shipped by nstray submit)")
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS / the job's cluster)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--verify", action="store_true", help="re-read every done output and check its checksum")
    args = parser.parse_args(argv)

    import click

    from nstray.cli.jobs import run_config

    try:
        run_config(_config_path(args), address=args.address, progress=not args.no_progress, verify=args.verify,
                   kind=kind)
    except click.ClickException as exc:
        print(f"error: {exc.format_message()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
