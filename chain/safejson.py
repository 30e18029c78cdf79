"""JSON from files other parties (or a corrupted disk) wrote: nesting is bounded before parsing.

CPython's JSON decoder recurses in C for every nested array or object; a document nested a hundred
thousand deep overflows the C stack and kills the process (a segfault, not a RecursionError: found
by tests/test_hostile_artifacts.py). A linear scan with numpy bounds the depth first.
"""

from __future__ import annotations

import json
import re

import numpy as np

MAX_JSON_DEPTH = 8  # kdledger's own documents nest at most 4 deep
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def nesting_depth(text: bytes | str, skip: re.Pattern[bytes] = _JSON_STRING) -> int:
    """The deepest [ { nesting of a JSON or YAML text, outside what `skip` matches (strings; comments too for
    YAML), in one vectorised pass."""
    raw = text.encode() if isinstance(text, str) else text
    marks = np.frombuffer(skip.sub(b"", raw), dtype=np.uint8)
    depth = np.cumsum(np.isin(marks, (91, 123)).astype(np.int64) - np.isin(marks, (93, 125)))
    return int(depth.max()) if depth.size else 0


def bounded_json(text: bytes | str, what: str, max_depth: int = MAX_JSON_DEPTH):
    """json.loads, after checking that the document nests at most `max_depth` deep (brackets outside strings);
    ValueError naming `what` otherwise, like any other malformed document."""
    raw = text.encode() if isinstance(text, str) else text
    if nesting_depth(raw) > max_depth:
        raise ValueError(f"{what} nests more than {max_depth} deep")
    return json.loads(raw)
