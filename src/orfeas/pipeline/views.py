"""Multi-view input: several photos of one object, named by where the camera stood.

A multi-view job carries a mapping from view name to image instead of one image. The names are Hunyuan3D-2mv's:
`front` (required; the view the mesh's texture and frame come from), `left` (the object turned 90 degrees
clockwise seen from above, i.e. the camera on its left), `back` and `right`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

from orfeas.errors import InvalidOptions

VIEW_NAMES = ("front", "left", "back", "right")
"""Known views in the model's order (the view index each is embedded with)."""

T = TypeVar("T")


def check_view_names(names: Iterable[str]) -> tuple[str, ...]:
    """The view names in canonical order; InvalidOptions for an unknown name, a repeat or a missing front."""
    names = list(names)
    unknown = sorted({n for n in names if n not in VIEW_NAMES}, key=str)
    if unknown:
        raise InvalidOptions(f"unknown views {unknown}; views are {', '.join(VIEW_NAMES)}")
    if len(set(names)) != len(names):
        raise InvalidOptions(f"each view may be given once, got {names}")
    if "front" not in names:
        raise InvalidOptions("a multi-view job needs a front view")
    return tuple(n for n in VIEW_NAMES if n in names)


def ordered_views(views: Mapping[str, T]) -> dict[str, T]:
    """`views` checked and in canonical order (front, left, back, right)."""
    return {name: views[name] for name in check_view_names(views)}


def views_of(item: object) -> tuple[str, ...]:
    """The view names of one batch item: () for a single image, the checked names of a mapping."""
    return check_view_names(item) if isinstance(item, Mapping) else ()


def batch_views(items: Sequence[object]) -> tuple[str, ...]:
    """The view names every item of a batch shares (() for single images); InvalidOptions for bad names or a
    batch mixing single images and views, or different views."""
    kinds = {views_of(item) for item in items}
    if len(kinds) > 1:
        raise InvalidOptions("a batch must hold single images only, or multi-view items with the same views")
    return kinds.pop() if kinds else ()
