"""The vocabulary of a config schema, over pydantic 2: bounds (``Range``), checks, errors, plain conversion.

A schema is a tree of plain (stdlib) dataclasses that holds every default. A field with a fixed set of values is
annotated ``Literal[...]``; a numeric field with bounds ``Annotated[int, Range(ge=1)]``. :func:`build` turns a plain
nested mapping into the dataclass tree with pydantic (strict JSON-mode types: ``1`` is never a ``bool``, ``True``
never an ``int``, an int is a ``float``, a list is a ``tuple``) and says what is wrong in one line that starts with
the dotted key: ``optim.lr: expected float, got 'abc' (str)``, ``train.precision: must be one of 'auto', 'fp32',
'bf16', 'fp16', got 'bf61'; did you mean 'bf16'?``, ``train.epochs: must be >= 1, got 0``.

Every layer may import this module; reading YAML, ``_base_`` files and overrides is ``densessl.config_io``'s job.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import json
import os
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar, Union

import pydantic
from pydantic_core import core_schema

__all__ = ["ConfigError", "Range", "build", "check_fields", "check_timm_arch", "choice_error", "fail", "to_dict",
           "type_error"]

T = TypeVar("T")
_NoneType = type(None)


class ConfigError(ValueError):
    """Invalid configuration; the message starts with the dotted key at fault (``key``; None when not one key)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class _OutOfRange(ValueError):
    """Raised by a ``Range`` check; ``value`` is the value after conversion (``0`` read for a float is ``0.0``)."""

    def __init__(self, message: str, value: Any, bound: bool = True) -> None:
        super().__init__(message)
        self.value, self.bound = value, bound  # bound: a bound failed (``or null`` applies); else the order did


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a numeric field: ``Annotated[float, Range(gt=0)]``; on a list/tuple field every item must hold, and
    ``ordered=True`` also needs the items in non-decreasing order (a ``(low, high)`` range, milestones)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    ordered: bool = False

    def holds(self, value: float) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def describe(self) -> str:
        """``>= 1``, ``> 0``, ``in [0, 1]``, ``in [0, 1)``, ``<= 0.5``."""
        low, opening = (self.ge, "[") if self.ge is not None else (self.gt, "(")
        top, closing = (self.le, "]") if self.le is not None else (self.lt, ")")
        if low is not None and top is not None:
            return f"in {opening}{low:g}, {top:g}{closing}"
        if low is not None:
            return f"{'>=' if opening == '[' else '>'} {low:g}"
        return f"{'<=' if closing == ']' else '<'} {top:g}"

    def check(self, value: Any) -> Any:
        """``value`` unchanged, or :class:`_OutOfRange` (``None`` passes: the type says whether it may be None)."""
        if value is None:
            return value
        items = value if isinstance(value, (list, tuple)) else [value]
        if not all(isinstance(item, (int, float)) and self.holds(item) for item in items):
            each = "every item " if isinstance(value, (list, tuple)) else ""
            raise _OutOfRange(f"{each}must be {self.describe()}", value)
        if self.ordered and list(items) != sorted(items):
            raise _OutOfRange("must be in non-decreasing order", value, bound=False)
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: pydantic.GetCoreSchemaHandler) -> Any:
        return core_schema.no_info_after_validator_function(self.check, handler(source))


# --------------------------------------------------------------------------- #
# Messages
# --------------------------------------------------------------------------- #


def fail(key: str, message: str) -> ConfigError:
    """``ConfigError("key: message")`` (``<root>`` for the top-level config)."""
    return ConfigError(f"{key or '<root>'}: {message}", key=key)


def short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def type_name(tp: Any) -> str:
    """``int``, ``str | None``, ``tuple[float, float]``, ``mapping for ModelCfg``."""
    if tp is _NoneType:
        return "None"
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in typing.get_args(tp))
    if is_dataclass_type(tp):
        return f"mapping for {tp.__name__}"
    return tp.__name__ if isinstance(tp, type) and typing.get_origin(tp) is None else str(tp).replace("typing.", "")


def type_error(key: str, expected: str, value: Any) -> ConfigError:
    return fail(key, f"expected {expected}, got {short_repr(value)} ({type(value).__name__})")


def choice_error(key: str, choices: Sequence[Any], value: Any, nullable: bool = False) -> ConfigError:
    """``key: must be one of 'a', 'b' [(or null)], got 'c'[; did you mean 'a'?]``."""
    listed = ", ".join(map(repr, choices))
    message = f"must be one of {listed}{' (or null)' if nullable else ''}, got {short_repr(value)}"
    close = difflib.get_close_matches(value, [c for c in choices if isinstance(c, str)], n=1) if isinstance(
        value, str) else []
    return fail(key, message + (f"; did you mean {close[0]!r}?" if close else ""))


# --------------------------------------------------------------------------- #
# Schema introspection
# --------------------------------------------------------------------------- #


def is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def strip_optional(tp: Any) -> Any:
    """``X | None`` -> ``X``; any other annotation unchanged."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        options = [arg for arg in typing.get_args(tp) if arg is not _NoneType]
        if len(options) == 1:
            return options[0]
    return tp


@functools.cache
def config_fields(cls: type) -> dict[str, tuple[dataclasses.Field[Any], Any]]:
    """Settable (``init=True``) fields of dataclass ``cls``: name -> (field, annotation without ``Annotated``)."""
    if not is_dataclass_type(cls):
        raise TypeError(f"expected a dataclass type, got {cls!r}")
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints.get(f.name, Any)) for f in dataclasses.fields(cls) if f.init}


@functools.cache
def _field_ranges(cls: type) -> dict[str, Range]:
    """Field name -> its ``Range`` (also inside ``X | None``)."""
    ranges = {}
    for name, tp in typing.get_type_hints(cls, include_extras=True).items():
        for candidate in typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,):
            if typing.get_origin(candidate) is Annotated:
                ranges.update((name, extra) for extra in candidate.__metadata__ if isinstance(extra, Range))
    return ranges


def literal_choices(tp: Any) -> tuple[tuple[Any, ...], bool] | None:
    """``(choices, nullable)`` of ``Literal[...]`` or ``Literal[...] | None``; None for another annotation."""
    inner = strip_optional(tp)
    if typing.get_origin(inner) is not Literal:
        return None
    return typing.get_args(inner), inner is not tp


def check_choice(tp: Any, value: Any, key: str) -> None:
    """A ``Literal`` field's value is one of its choices, ``1`` told from ``True`` and ``1.0`` (pydantic's JSON mode
    does not)."""
    spec = literal_choices(tp)
    if spec is not None and not (any(type(value) is type(c) and value == c for c in spec[0])
                                 or (spec[1] and value is None)):
        raise choice_error(key, spec[0], value, spec[1])


def check_fields(obj: Any) -> None:
    """Check the ``Literal`` and ``Range`` fields of dataclass ``obj`` (not its nested dataclasses): for the
    ``validate()`` of a config also built in Python. Raises a plain ``ValueError`` ``"<field>: ..."``."""
    if not (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        raise TypeError(f"check_fields() expects a dataclass instance, got {type(obj).__name__}")
    try:
        check_node(obj, "")
    except ConfigError as error:
        raise ValueError(str(error)) from None


def check_node(obj: Any, path: str) -> None:
    """:func:`check_fields` with ``ConfigError`` messages prefixed by ``path``."""
    try:
        fields, ranges = config_fields(type(obj)), _field_ranges(type(obj))
    except (NameError, TypeError):  # annotations that do not resolve: not a schema node
        return
    for name, (_, tp) in fields.items():
        key = f"{path}.{name}" if path else name
        check_choice(tp, getattr(obj, name), key)
        if name in ranges:
            try:
                ranges[name].check(getattr(obj, name))
            except _OutOfRange as error:
                raise _range_error(key, tp, error) from None


def check_timm_arch(arch: str) -> None:
    """For a config's ``validate()``: ``arch`` names a timm model (``"arch: unknown timm architecture ..."``),
    checked at load, before a tool creates its run folder."""
    import timm

    from densessl.convert import unknown_arch_message

    if not timm.is_model(arch):
        raise ValueError(f"arch: {unknown_arch_message(arch)}")


def _range_error(key: str, tp: Any, error: _OutOfRange) -> ConfigError:
    nullable = " or null" if strip_optional(tp) is not tp and error.bound else ""
    return fail(key, f"{error}{nullable}, got {short_repr(error.value)}")


# --------------------------------------------------------------------------- #
# Building a dataclass tree from plain data (pydantic)
# --------------------------------------------------------------------------- #


@functools.cache
def _adapter(cls: type) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(cls)


def build(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """``cls`` from plain nested ``data`` (every key known; missing ones take the class defaults).

    Raises:
        ConfigError: The first value that does not fit its annotation, bound or ``Literal``.
    """
    try:
        return _adapter(cls).validate_json(json.dumps(data), strict=True)
    except pydantic.ValidationError as exc:
        raise _translate(cls, exc.errors(include_url=False)[0], prefix) from None


def _translate(cls: type, error: Mapping[str, Any], prefix: str) -> ConfigError:
    """One pydantic error -> one ConfigError at the deepest dotted key its location resolves to."""
    key, tp, owner = prefix, cls, cls
    for part in error["loc"]:
        tp = strip_optional(tp)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if is_dataclass_type(tp) and part in config_fields(tp):
            owner, tp, key = tp, config_fields(tp)[part][1], f"{key}.{part}" if key else str(part)
        elif isinstance(part, int) and origin in (list, tuple):
            tp, key = (args[0] if origin is list or args[-1:] == (Ellipsis,) else args[part]) if args else Any, \
                f"{key}[{part}]"
        elif origin is dict:
            tp, key = args[1] if args else Any, f"{key}.{part}"
        else:  # a union member's tag: the message names the whole union
            break
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "missing":
        return fail(key, f"missing required value ({owner.__name__} has no default for it)")
    if kind == "literal_error":
        choices, nullable = literal_choices(tp) or ((), False)
        return choice_error(key, choices, value, nullable)
    if kind == "value_error" and isinstance(ctx.get("error"), _OutOfRange):
        return _range_error(key, tp, ctx["error"])
    if kind == "value_error":
        return fail(key, f"cannot build {type_name(strip_optional(tp)).removeprefix('mapping for ')}: {ctx['error']}")
    if kind in ("too_long", "too_short") and typing.get_origin(tp) is tuple:
        return fail(key, f"expected {type_name(tp)} with {len(typing.get_args(tp))} element(s), got {len(value)}: "
                         f"{short_repr(value)}")
    return type_error(key, type_name(tp), value)


# --------------------------------------------------------------------------- #
# Plain conversion
# --------------------------------------------------------------------------- #


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config (dataclass or mapping) as plain Python types, in field order (``init=False`` fields left out; tuples
    -> lists, enums -> values, paths -> strings): it dumps to YAML and loads with ``torch.load(weights_only=True)``.

    Raises:
        ConfigError: A value with no plain form.
    """
    plain = to_plain(cfg, "")
    if not isinstance(plain, dict):
        raise TypeError(f"to_dict() expects a dataclass instance or a mapping, got {type(cfg).__name__}")
    return plain


def to_plain(value: Any, key: str = "") -> Any:
    """:func:`to_dict` for any value."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name), f"{key}.{f.name}".lstrip("."))
                for f in dataclasses.fields(value) if f.init}
    if isinstance(value, enum.Enum):
        return to_plain(value.value, key)
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {to_plain(k, f"{key} (key {k!r})"): to_plain(v, f"{key}.{k}".lstrip(".")) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item, f"{key}[{i}]") for i, item in enumerate(value)]
    raise fail(key, f"cannot convert {type(value).__name__} to a plain type: {short_repr(value)}")
