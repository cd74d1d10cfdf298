"""The Milvus gallery backend: client wrapper and filter-expression building."""
