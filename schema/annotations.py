"""Walking the models' type annotations: which model a path into a document leads to."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel

from mailwright.schema.diagnostics import SpecPath


def unwrap(annotation: Any) -> Any:
    """`Annotated[X, ...]` and `X | None` as plain X."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        else:
            return annotation


def model_of(annotation: Any) -> type[BaseModel] | None:
    annotation = unwrap(annotation)
    return (
        annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    )


def item_of(annotation: Any) -> Any:
    """The element type of `tuple[X, ...]` or `list[X]`."""
    return (typing.get_args(unwrap(annotation)) or (None,))[0]


def model_at(annotation: Any, path: SpecPath) -> type[BaseModel] | None:
    for step in path:
        model = model_of(annotation)
        if isinstance(step, int):
            annotation = item_of(annotation)
        elif model is not None and step in model.model_fields:
            annotation = model.model_fields[step].annotation
        else:
            return None
    return model_of(annotation)
