"""Output storage: one interface (``base``), a local and an S3 backend, ``open_storage`` for a URI, and the
output ``layout`` that names every key a run writes."""

from hyca_batch.storage.base import AlreadyExists, Storage, StorageError, validate_key
from hyca_batch.storage.local import LocalStorage
from hyca_batch.storage.open import open_storage

__all__ = ["AlreadyExists", "LocalStorage", "Storage", "StorageError", "open_storage", "validate_key"]
