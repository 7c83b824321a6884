"""flowtrace's version, alone in a module so subpackages never import the package root."""

__version__ = "0.1.0"
