"""Ray job entrypoint: train a parts segmenter on Ray Train (``ray job submit -- python jobs/train_segmentation.py ...``).

    python jobs/train_segmentation.py --data ANN --images DIR_OR_URI --out URI [--arch NAME] [--epochs N] ...

Takes exactly the options of ``nstray train-seg`` (it runs that command). Inside a Ray job,
``ray.init()`` connects to the cluster the job runs on (``RAY_ADDRESS``).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the training; exit 0 when it finished (or had nothing to do), 1 when it could not run, 2 on bad options."""
    from nstray.cli.entrypoints import run_command
    from nstray.cli.segmentation import train_seg

    return run_command(train_seg, argv, "train_segmentation.py")


if __name__ == "__main__":
    sys.exit(main())
