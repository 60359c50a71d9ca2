"""Domain errors raised by the core; only `api/` turns them into HTTP answers or CLI messages."""

from __future__ import annotations


class PixsearchError(Exception):
    """Base class of every error pixsearch reports to a user as one line."""


class UnreadableImage(PixsearchError):
    """A file could not be read as an image (empty, truncated, not an image, too large...)."""


class ImageTooLarge(UnreadableImage):
    """An image over a pixel, memory or file-size limit (a decompression bomb, or just huge)."""


class ModelUnavailable(PixsearchError):
    """Model weights or configuration could not be loaded."""


class NotFound(PixsearchError):
    """An image id or path the user named is not in the collection."""


class InvalidInput(PixsearchError):
    """A request that cannot be answered as asked (bad argument, missing file...)."""


class ClusterUnavailable(PixsearchError):
    """The Ray cluster cannot be used: Ray missing, nothing answering, another Ray version, or
    the cluster failing mid-run."""


class HomeError(PixsearchError):
    """The data folder or its database cannot be used."""


class HomeBusy(HomeError):
    """Another indexing run holds the home's lock (`pixsearch watch` tries again later)."""


class IndexDamaged(HomeError):
    """The loaded FAISS index failed while searching; the searcher rebuilds it."""
