"""The one exception type the CLI catches for any image or build failure."""


class ImageError(Exception):
    """Pulling, extracting or building an image failed; ``str()`` is one line."""
