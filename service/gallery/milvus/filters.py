"""Milvus filter expressions built from values that may come from users, never pasted in raw.

pymilvus' templated filters (``filter_params``) are not understood by Milvus Lite, so every string value goes
through ``literal``: a double-quoted literal with backslash, quote and the common control characters escaped;
any other control character is refused (Milvus and Milvus Lite disagree on the rarer escapes).

    expr = f"gallery == {literal(name)} and sha256 in {literal_list(hashes)}"
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

logger = logging.getLogger(__name__)

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


class UnsafeFilterValueError(ValueError):
    """A value holds a control character that has no escape both Milvus and Milvus Lite read alike."""


def literal(value: str) -> str:
    """``value`` as a double-quoted Milvus string literal that parses back to exactly ``value``."""
    out = ['"']
    for ch in value:
        escaped = _ESCAPES.get(ch)
        if escaped is not None:
            out.append(escaped)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise UnsafeFilterValueError(f"control character U+{ord(ch):04X} in a filter value")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def literal_list(values: Iterable[str]) -> str:
    """``["a", "b"]`` for an ``in`` expression, every element escaped by ``literal``."""
    return "[" + ", ".join(literal(v) for v in values) + "]"
