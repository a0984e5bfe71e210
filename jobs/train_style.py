"""Ray job entrypoint: train a feed-forward style on Ray Train (``ray job submit -- python jobs/train_style.py ...``).

    python jobs/train_style.py STYLE_IMAGE --data DIR_OR_COCO_URI --out URI [--mode johnson|cin] [--steps N] ...

Takes exactly the options of ``nstray train-style`` (it runs that command). Inside a Ray job,
``ray.init()`` connects to the cluster the job runs on (``RAY_ADDRESS``).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the training; exit 0 when it finished (or had nothing to do), 1 when it could not run, 2 on bad options."""
    from nstray.cli.entrypoints import run_command
    from nstray.cli.train import train_style

    return run_command(train_style, argv, "train_style.py")


if __name__ == "__main__":
    sys.exit(main())
