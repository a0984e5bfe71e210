"""nstray: per-part neural style transfer over labeled vehicle datasets, at dataset scale on Ray."""

from nstray import _runtime

__version__ = "0.1.0"

# first, before anything loads torch: fast CPU inference by default (see nstray/_runtime.py)
_runtime.configure()
