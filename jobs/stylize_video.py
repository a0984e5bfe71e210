"""Ray job entrypoint: run the video job from a config (``kind: video``; ``nstray submit`` runs this for one).

    python jobs/stylize_video.py CONFIG.yaml            # a path (or s3:// URI) to a video job config
    python jobs/stylize_video.py --config-module NAME   # the config shipped by `nstray submit` (py_modules)

The same options as jobs/stylize_dataset.py (whose argument handling it shares); an image job config is refused.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stylize_dataset import main as _main  # noqa: E402 - the sibling entrypoint, found through the path above


def main(argv: list[str] | None = None) -> int:
    """Run the video job; exit 0 when it completed (failed videos are in errors.parquet), 1 when it could not run."""
    return _main(argv, kind="video", doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
