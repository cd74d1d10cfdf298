"""Gallery layer: one interface between the routes and wherever gallery items live (see base.py).

Backends are built by ``service.gallery.factory.open_gallery``; this package's namespace holds only the
backend-independent types, so importing it stays cheap and free of import cycles.
"""

from service.gallery.base import (
    BackendUnavailableError,
    CollectionInfo,
    CollectionNotFoundError,
    DuplicateCropError,
    Gallery,
    GalleryHealth,
    GalleryItem,
    GalleryObserver,
    NewItem,
    ScoredItem,
)

__all__ = [
    "BackendUnavailableError",
    "CollectionInfo",
    "CollectionNotFoundError",
    "DuplicateCropError",
    "Gallery",
    "GalleryHealth",
    "GalleryItem",
    "GalleryObserver",
    "NewItem",
    "ScoredItem",
]
