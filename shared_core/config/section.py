"""Base class of every configuration section (kept apart so concept modules can define their own)."""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from shared_core.config.reading import ConfigError, validation_message


class ConfigSection(BaseModel):
    """A config section: unknown keys are errors, so typos never pass silently; assignments are validated.

    Errors never echo the input (`hide_input_in_errors`): a config may come from a shared file, and printing a
    deeply aliased value costs time exponential in its size. A bool is never accepted for a number field
    (pydantic would read `true` as 1), nor NaN/inf for any field.
    Every way in raises the same one-line `ConfigError` (a ValueError): direct construction, `model_validate`,
    an assignment, `from_yaml` and the adapters (never a raw pydantic `ValidationError`).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, hide_input_in_errors=True)

    def __init__(self, /, **data: Any) -> None:
        """Validate `data`; a mistake is a `ConfigError` naming the section, the fields and the error types."""
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(validation_message(exc, type(self).__name__)) from None

    # pydantic calls a custom __init__ for nested sections and model_validate too; marked as a base __init__ it
    # validates those directly, so a nested mistake keeps its full location (`units.granularity`), not a wrapper's
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:
        """pydantic's `model_validate`, its errors a `ConfigError` as construction's are."""
        return cls.validated(obj, cls.__name__, **kwargs)

    @classmethod
    def validated(cls, data: Any, source: str = "dict", **kwargs: Any) -> Self:
        """`model_validate` whose errors are one bounded `ConfigError` naming `source` (locations and types, never
        the input)."""
        try:
            return super().model_validate(data, **kwargs)
        except ValidationError as exc:
            raise ConfigError(validation_message(exc, source)) from None

    def __setattr__(self, name: str, value: Any) -> None:
        """A validated assignment; a bad value is a `ConfigError`."""
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise ConfigError(validation_message(exc, type(self).__name__)) from None

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is None:
            return value
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{info.field_name} must be a finite number, got {value!r}")
        if not _holds_bool(value):
            return value
        if isinstance(value, bool) and _takes_number_not_bool(field.annotation):
            raise ValueError(f"{info.field_name} cannot be a bool ({value!r}): give a number")
        if isinstance(value, list | dict) and _takes_number_items(field.annotation):
            raise ValueError(f"{info.field_name} must hold numbers; it holds a bool")
        return value


def _holds_bool(value: Any) -> bool:
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return isinstance(value, bool) or any(isinstance(v, bool) for v in items)


def _members(annotation: Any) -> list[Any]:
    """The alternatives of a union (or the annotation itself)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _members(arg)]
    return [annotation]


def _takes_number_not_bool(annotation: Any) -> bool:
    members = _members(annotation)
    accepts_bool = any(
        m is bool or (typing.get_origin(m) is Literal and any(isinstance(a, bool) for a in typing.get_args(m)))
        for m in members
    )
    return not accepts_bool and any(m in (int, float) for m in members)


def _takes_number_items(annotation: Any) -> bool:
    """A list of numbers or a mapping to numbers (the item type refuses bools)."""
    for m in _members(annotation):
        args = typing.get_args(m)
        if typing.get_origin(m) in (list, dict) and args and _takes_number_not_bool(args[-1]):
            return True
    return False
