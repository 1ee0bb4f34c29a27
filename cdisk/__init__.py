"""cdisk: turn a cached containerDisk image into a usable disk without extracting anything."""

__version__ = "0.1.0"
