"""coop: AI coding agents in Linux-namespace sandboxes, kept alive by a background daemon."""

__version__ = "0.1.0"
