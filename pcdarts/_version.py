"""The package version, in a foundation module so that any layer may read it (``pcdarts.__version__``)."""
__version__ = "0.1.0"
