"""nstray: per-part neural style transfer over labeled vehicle datasets, at dataset scale on Ray."""

__version__ = "0.1.0"
