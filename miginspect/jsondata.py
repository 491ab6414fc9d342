"""The one JSON serializer: typed reports as plain JSON data.

Pure (no rich), so analyses that write JSON files of their own (extract's manifest) use
the same rules as `--json`: dataclasses field by field (through their `to_json` when they
have one), numpy scalars and arrays, bytes as hex, sets and tuples as lists.
`miginspect.ui` re-exports it for the commands.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any


def jsonable(o: Any) -> Any:
    """`o` as plain JSON data (see the module doc)."""
    import numpy as np

    if o is None or isinstance(o, (bool, int, float, str)):
        return o
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in o]
    to_json = getattr(o, "to_json", None)
    if callable(to_json):
        return jsonable(to_json())
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return fields_json(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (bytes, bytearray, memoryview)):
        return bytes(o).hex()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def fields_json(o: Any) -> dict[str, Any]:
    """A dataclass's fields as JSON data, in field order (for a `to_json` that adds to
    them without calling itself)."""
    return {f.name: jsonable(getattr(o, f.name)) for f in dataclasses.fields(o)}


def dumps(data: Any, indent: int | None = 2) -> str:
    return json.dumps(jsonable(data), indent=indent)


class JsonLines:
    """A report printed as JSON Lines: one compact object per line (`audit --json`).
    Wraps a callable that yields the objects, so the lines are made as they are
    written (the report is never one object in memory)."""

    def __init__(self, objects: Callable[[], Iterable[Any]]) -> None:
        self.objects = objects

    def lines(self) -> Iterator[str]:
        for o in self.objects():
            yield json.dumps(jsonable(o), separators=(",", ":"))
