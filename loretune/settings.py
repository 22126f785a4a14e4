"""Plain settings from a config section: the one translation from pydantic to library arguments.

Libraries take small frozen dataclasses, never the config's pydantic sections, so they can be called
and tested without the config module. The task layer turns a validated section's dump into the
library's dataclass here. Keys are matched both ways: a section key the dataclass neither takes
nor lists in `ignore` (what only the task reads, such as a credentials block) is an error, so a new
config field cannot be silently dropped on its way to the code that should use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def from_values(cls: type[T], values: Mapping[str, Any], ignore: Collection[str] = ()) -> T:
    """`cls` built from `values`; lists become tuples, so the settings stay frozen and hashable."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names - set(ignore))
    if unknown:
        raise TypeError(f"{cls.__name__} takes no {', '.join(unknown)}: add it to the settings or to `ignore`")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names})
