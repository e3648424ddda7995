"""The package version: one place, read by the package and its command line."""

__version__ = "0.1.0"
