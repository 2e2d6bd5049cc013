"""Helpers that need no torch."""

from typing import Any


def parse_bytes(v: Any) -> int:
    """``256M``, ``1G``, ``512K`` (binary units, an optional ``B``/``iB``) or a number of bytes."""
    if isinstance(v, int):
        return v
    s = str(v).strip().upper()
    for suffix in ("IB", "B"):
        if s.endswith(suffix) and len(s) > len(suffix):
            s = s[: -len(suffix)]
            break
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if s and s[-1] in mult:
        return int(float(s[:-1]) * mult[s[-1]])
    return int(s)
