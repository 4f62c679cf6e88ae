"""The package version, in a module of its own: the report and the command line name it
without importing the whole public API that ``deepdoctor/__init__.py`` gathers."""

__version__ = "0.1.0"
