"""archiver plugin ``postgres`` (being written)."""
