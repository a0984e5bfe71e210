"""Ray job entrypoint: train a parts segmenter on Ray Train (``ray job submit -- python jobs/train_segmentation.py ...``).

    python jobs/train_segmentation.py --data ANN --images DIR_OR_URI --out URI [--arch NAME] [--epochs N] ...

Takes exactly the options of ``nstray train-seg`` (it runs that command). Inside a Ray job,
``ray.init()`` connects to the cluster the job runs on (``RAY_ADDRESS``).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the training; exit 0 when it finished (or had nothing to do), 1 when it could not run, 2 on bad options."""
    import click

    from nstray.cli.segmentation import train_seg

    try:
        train_seg.main(args=list(sys.argv[1:] if argv is None else argv), prog_name="train_segmentation.py",
                       standalone_mode=False)
    except click.exceptions.Exit as exc:  # --help
        return int(exc.exit_code)
    except click.UsageError as exc:
        exc.show()
        return 2
    except click.ClickException as exc:
        print(f"error: {exc.format_message()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
