"""The local gallery backend: SQLite store (source of truth), FAISS index, snapshots, GPU owner, reindex."""
