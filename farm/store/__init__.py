"""The results store: database (SQLAlchemy) and content-addressed artifacts."""

from farm.store.artifacts import ArtifactMissing, ArtifactStore
from farm.store.db import Store, StoreLocation, open_store

__all__ = ["ArtifactMissing", "ArtifactStore", "Store", "StoreLocation", "open_store"]
