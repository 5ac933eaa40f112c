"""Schema-agnostic loading, checking and saving of dataclass configs.

A config schema is a tree of (nested) dataclasses that holds *every* default.
An experiment YAML lists only what it changes, and the command line can change
single values with a dotlist (``optim.lr=0.1 data.sizes=[224,96]``).

Precedence, lowest to highest::

    dataclass defaults  <  _base_ files  <  the YAML file  <  CLI dotlist overrides

* ``_base_`` (top level of a YAML file): a path, or a list of paths, relative to
  the including file. The bases are loaded (recursively; cycles are an error)
  and deep-merged in list order, then the including file is deep-merged on top.
* Deep merge: mappings are merged key by key; any other value (lists included)
  is replaced as a whole.
* The (merged) YAML mapping is applied to the defaults with ``from_dict``: a
  sub-mapping for a nested dataclass field is applied on top of that field's
  default, missing fields keep their defaults, and every other field given is
  replaced. A ``dict[K, V]`` field written in YAML is therefore its whole value,
  so a saved config reloads exactly (``from_dict(cls, to_dict(cfg)) == cfg``).
* CLI overrides are applied with ``merge``: like ``from_dict`` except that a
  ``dict[K, V]`` field is updated key by key, so ``loss.weights.dense=0.5``
  changes one entry and keeps the others.

Everything is checked before training starts: unknown keys (with a "did you
mean" suggestion), leaf values against the field annotations (see
``_coerce``), and finally the ``validate(self) -> None`` methods of every
dataclass node. Every failure raises :class:`ConfigError`, whose message starts
with the full dotted key, e.g. ``optim.lr: expected float, got 'abc' (str)``.

A field that takes one of a fixed set of values is annotated ``Literal[...]``
and needs no hand-written check: ``train.precision: must be one of 'auto',
'fp32', 'bf16', 'fp16', got 'bf61'; did you mean 'bf16'?``. A numeric field
with bounds is annotated ``Annotated[int, Range(ge=1)]`` (every item of a
list/tuple field is checked; ``None`` passes for ``X | None`` fields) and needs
no hand-written check either: ``train.epochs: must be >= 1, got 0``.
``validate()`` keeps only what involves several fields. A config that is also
built directly in Python calls :func:`check_fields` from its ``validate()``.

YAML is read with a safe loader that also resolves scientific notation without
a dot (``1e-3``) as a float, which plain YAML 1.1 reads as a string.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import enum
import functools
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar, Union

import yaml

from densessl.atomic import atomic_write_text

__all__ = [
    "ConfigError",
    "Range",
    "check_fields",
    "flatten",
    "from_dict",
    "load_config",
    "merge",
    "parse_dotlist",
    "save_config",
    "to_dict",
    "validate_config",
]

T = TypeVar("T")

_BASE_KEY = "_base_"
_ROOT = "<root>"
_NoneType = type(None)


class ConfigError(ValueError):
    """Invalid configuration; the message starts with the dotted key at fault.

    Attributes:
        key: The dotted key at fault, when the error is about one key (else None).
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a numeric config field, checked with the ``Literal`` choices: ``Annotated[float, Range(gt=0)]``.

    ``ge`` / ``gt``: inclusive / exclusive lower bound; ``le`` / ``lt``: inclusive / exclusive upper bound. On a
    list or tuple field every item must hold, and ``ordered=True`` also needs the items in non-decreasing order (a
    ``(low, high)`` range, a list of milestones).
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    ordered: bool = False

    def holds(self, value: float) -> bool:
        """Whether ``value`` is within the bounds."""
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def describe(self) -> str:
        """``>= 1``, ``> 0``, ``in [0, 1]``, ``in [0, 1)``, ``<= 0.5``."""
        low, high = (self.ge, "[") if self.ge is not None else (self.gt, "(")
        top, close = (self.le, "]") if self.le is not None else (self.lt, ")")
        if low is not None and top is not None:
            return f"in {high}{low:g}, {top:g}{close}"
        if low is not None:
            return f"{'>=' if high == '[' else '>'} {low:g}"
        return f"{'<=' if close == ']' else '<'} {top:g}"


# --------------------------------------------------------------------------- #
# YAML dialect: safe loader/dumper that treat "1e-3" as a float.
# --------------------------------------------------------------------------- #

# YAML 1.1 needs a dot in a float ("1.0e-3"); this also accepts "1e-3", "-2E+5".
_SCI_FLOAT_RE = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` as a float and refuses duplicate keys in a mapping.

    Plain YAML keeps the last of two equal keys, so a second ``optim:`` block would silently drop the first.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first defined on line {seen[key]}); merge the two entries",
                    key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


class _Dumper(yaml.SafeDumper):
    """``yaml.SafeDumper`` that quotes strings ``_Loader`` would read as floats."""


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _SCI_FLOAT_RE, list("-+0123456789"))


def _yaml_load(text: str) -> Any:
    """Parse one YAML document with the project's safe loader."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


# --------------------------------------------------------------------------- #
# Small helpers
# --------------------------------------------------------------------------- #


def _join(prefix: str, key: Any) -> str:
    """Return the dotted key ``prefix.key`` (or ``key`` when there is no prefix)."""
    return f"{prefix}.{key}" if prefix else str(key)


def _fail(key: str, message: str) -> ConfigError:
    """Build a ConfigError whose message starts with ``key``."""
    return ConfigError(f"{key or _ROOT}: {message}", key=key)


def _short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)``, shortened to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_error(key: str, expected: str, value: Any) -> ConfigError:
    """Standard message: ``key: expected <type>, got <repr> (<type name>)``."""
    return _fail(key, f"expected {expected}, got {_short_repr(value)} ({type(value).__name__})")


def _choice_error(key: str, choices: Sequence[Any], value: Any, nullable: bool = False) -> ConfigError:
    """Standard message for a ``Literal`` field: ``key: must be one of 'a', 'b', got 'c'; did you mean 'a'?``."""
    message = f"must be one of {', '.join(repr(choice) for choice in choices)}"
    message += " (or null)" if nullable else ""
    message += f", got {_short_repr(value)}"
    if isinstance(value, str):
        close = difflib.get_close_matches(value, [choice for choice in choices if isinstance(choice, str)], n=1)
        message += f"; did you mean {close[0]!r}?" if close else ""
    return _fail(key, message)


def _is_literal(tp: Any) -> bool:
    """True if ``tp`` is a ``Literal[...]`` annotation."""
    return typing.get_origin(tp) is Literal


def _in_choices(value: Any, choices: Sequence[Any]) -> bool:
    """Membership that tells ``1`` from ``True`` and ``1.0``."""
    return any(type(value) is type(choice) and value == choice for choice in choices)


def _type_name(tp: Any) -> str:
    """Human-readable name of a type annotation, for error messages."""
    if tp is _NoneType:
        return "None"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in typing.get_args(tp))
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return f"mapping for {tp.__name__}"
    if isinstance(tp, type) and origin is None:
        return tp.__name__
    return str(tp).replace("typing.", "")


def _is_dataclass_type(tp: Any) -> bool:
    """True if ``tp`` is a dataclass *class* (not an instance)."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _strip_optional(tp: Any) -> Any:
    """``X | None`` -> ``X``; any other annotation is returned unchanged."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [arg for arg in typing.get_args(tp) if arg is not _NoneType]
        if len(args) == 1:
            return args[0]
    return tp


@functools.lru_cache(maxsize=None)
def _config_fields(cls: type) -> dict[str, tuple[dataclasses.Field[Any], Any]]:
    """Settable fields of dataclass ``cls``: name -> (field, resolved annotation).

    Fields declared with ``init=False`` are not settable from a config.
    """
    if not _is_dataclass_type(cls):
        raise TypeError(f"expected a dataclass type, got {cls!r}")
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints.get(f.name, Any)) for f in dataclasses.fields(cls) if f.init}


def _unknown_key(key: str, prefix: str, cls: type) -> ConfigError:
    """Error for ``key`` that is not a field of ``cls``, with a suggestion."""
    valid = list(_config_fields(cls))
    full_key = _join(prefix, key)
    message = "unknown key"
    close = difflib.get_close_matches(str(key), valid, n=1)
    message += f"; did you mean '{close[0]}'?" if close else "."
    where = f"'{prefix}'" if prefix else "the top level"
    message += f" Valid keys at {where} ({cls.__name__}): {', '.join(valid) or '(none)'}"
    return _fail(full_key, message)


def _field_default(field: dataclasses.Field[Any]) -> Any:
    """Default value of ``field`` (calls its default_factory), or ``MISSING``."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """New dict: ``override`` merged into ``base`` (mappings recursively, rest replaced)."""
    result = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = _deep_merge(result[key], value)
        else:
            result[key] = value
    return result


# --------------------------------------------------------------------------- #
# Type checking / coercion of values against annotations
# --------------------------------------------------------------------------- #


def _coerce(tp: Any, value: Any, key: str, update: bool = False) -> Any:
    """Check ``value`` against annotation ``tp`` and return it in canonical form.

    Rules: ``int`` takes int (not bool); ``float`` takes int or float and returns
    float (not bool); ``bool`` takes only bool; ``str`` takes only str;
    ``Literal[...]`` checks membership; ``X | None`` takes None or X; ``list[X]``,
    ``tuple[X, ...]`` and ``tuple[X, Y]`` take a list or tuple, check every element
    (and a fixed tuple's length) and convert to the annotated container;
    ``dict[K, V]`` takes a mapping and checks keys and values; a dataclass takes a
    mapping (built with :func:`from_dict`) or an instance of itself. Any other
    annotation accepts the value as is.

    Args:
        tp: The resolved annotation.
        value: The raw value (from YAML, the CLI or Python).
        key: Dotted key of the value, for error messages.
        update: Passed on to nested dataclasses built from mappings: whether
            their ``dict`` fields are updated (True) or replaced (False).

    Returns:
        The value, converted where the annotation says so.

    Raises:
        ConfigError: If the value does not fit the annotation.
    """
    if tp is Any or tp is object:
        return value
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return _build(tp, value, key, update)
        raise _type_error(key, _type_name(tp), value)

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if origin is Literal:
        if _in_choices(value, args):
            return value
        raise _choice_error(key, args, value)

    if origin in (Union, types.UnionType):
        if value is None and _NoneType in args:
            return None
        options = [arg for arg in args if arg is not _NoneType]
        if len(options) == 1:  # Optional[X]: X's own (more precise) error message
            try:
                return _coerce(options[0], value, key, update)
            except ConfigError as exc:
                if exc.key == key and _is_literal(options[0]):
                    raise _choice_error(key, typing.get_args(options[0]), value, nullable=True) from None
                if exc.key == key and not _is_dataclass_type(options[0]):  # mention None too
                    raise _type_error(key, _type_name(tp), value) from None
                raise  # error deeper inside (element, nested field): keep it
        for option in options:
            try:
                return _coerce(option, value, key, update)
            except ConfigError:
                continue
        raise _type_error(key, _type_name(tp), value)

    if tp is _NoneType:
        if value is None:
            return None
        raise _type_error(key, "None", value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, "bool", value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(key, "int", value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _type_error(key, "float", value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _type_error(key, "str", value)

    if tp is list or origin is list:
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, _type_name(tp), value)
        item_tp = args[0] if args else Any
        return [_coerce(item_tp, item, f"{key}[{i}]", update) for i, item in enumerate(value)]

    if tp is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, _type_name(tp), value)
        if not args:  # bare `tuple`
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]
            return tuple(_coerce(args[0], item, f"{key}[{i}]", update) for i, item in enumerate(value))
        if args == ((),):  # tuple[()]
            args = ()
        if len(value) != len(args):
            raise _fail(
                key,
                f"expected {_type_name(tp)} with {len(args)} element(s), "
                f"got {len(value)}: {_short_repr(value)}",
            )
        return tuple(
            _coerce(arg, item, f"{key}[{i}]", update) for i, (arg, item) in enumerate(zip(args, value))
        )

    if tp is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise _type_error(key, _type_name(tp), value)
        key_tp, value_tp = args if len(args) == 2 else (Any, Any)
        return {
            _coerce(key_tp, k, f"{key} (key {k!r})"): _coerce(value_tp, v, _join(key, k), update)
            for k, v in value.items()
        }

    return value


# --------------------------------------------------------------------------- #
# Building and merging dataclasses
# --------------------------------------------------------------------------- #


def _check_mapping(data: Any, prefix: str, cls: type) -> None:
    """Raise ConfigError unless ``data`` is a mapping (the content for ``cls``)."""
    if not isinstance(data, Mapping):
        raise _type_error(prefix, _type_name(cls), data)


def _construct(cls: type[T], kwargs: dict[str, Any], prefix: str) -> T:
    """Call ``cls(**kwargs)``, turning missing fields / __post_init__ errors into ConfigError."""
    fields = _config_fields(cls)
    for name, (field, _) in fields.items():
        if (
            name not in kwargs
            and field.default is dataclasses.MISSING
            and field.default_factory is dataclasses.MISSING
        ):
            raise _fail(_join(prefix, name), f"missing required value ({cls.__name__} has no default for it)")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise _fail(prefix, f"cannot build {cls.__name__}: {exc}") from exc


def from_dict(cls: type[T], data: Mapping[str, Any], *, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (possibly partial) nested mapping.

    Fields missing from ``data`` keep their defaults (``default`` or
    ``default_factory``). A sub-mapping for a nested dataclass field is applied
    on top of that field's default value; any other given value (a ``dict``
    field's mapping included) replaces the default. Leaf values are checked and
    converted against the field annotations (see :func:`_coerce`).

    Args:
        cls: The dataclass type to build.
        data: Mapping of field name to value; nested mappings for nested dataclasses.
        prefix: Dotted key of ``data`` inside the full config, for error messages.

    Returns:
        A new instance of ``cls``.

    Raises:
        ConfigError: On unknown keys (with the valid keys and a "did you mean"
            suggestion), values of the wrong type, or missing required fields.
    """
    return _build(cls, data, prefix, update=False)


def _build(cls: type[T], data: Mapping[str, Any], prefix: str, update: bool) -> T:
    """Build ``cls`` from ``data`` over its defaults (see :func:`from_dict`).

    Args:
        cls: Dataclass type to build.
        data: Partial mapping of field values.
        prefix: Dotted key of ``data``, for error messages.
        update: If True, ``dict`` fields are updated key by key; else replaced.
    """
    fields = _config_fields(cls)
    _check_mapping(data, prefix, cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key(key, prefix, cls)
        field, tp = fields[key]
        full_key = _join(prefix, key)
        default = _field_default(field) if isinstance(value, Mapping) else dataclasses.MISSING
        if default is not dataclasses.MISSING:
            kwargs[key] = _apply(tp, default, value, full_key, update)
        else:
            kwargs[key] = _coerce(tp, value, full_key, update)
    return _construct(cls, kwargs, prefix)


def _apply(tp: Any, current: Any, value: Any, key: str, update: bool) -> Any:
    """Apply ``value`` to the ``current`` value of a field annotated ``tp``.

    A mapping applied to a dataclass instance is merged into it; with ``update``
    a mapping applied to a ``dict[K, V]`` value updates it key by key. Anything
    else replaces ``current`` (after checking against ``tp``).
    """
    if isinstance(value, Mapping):
        inner = _strip_optional(tp)
        if _is_dataclass_type(inner) and isinstance(current, inner):
            return _merge_dataclass(current, value, key, update)
        if update and (inner is dict or typing.get_origin(inner) is dict) and isinstance(current, Mapping):
            args = typing.get_args(inner)
            key_tp, value_tp = args if len(args) == 2 else (Any, Any)
            result = dict(current)
            for k, v in value.items():
                k = _coerce(key_tp, k, f"{key} (key {k!r})")
                sub_key = _join(key, k)
                if k in current:
                    result[k] = _apply(value_tp, current[k], v, sub_key, update)
                else:
                    result[k] = _coerce(value_tp, v, sub_key, update)
            return result
    return _coerce(tp, value, key, update)


def _merge_dataclass(obj: T, data: Mapping[str, Any], prefix: str, update: bool) -> T:
    """New instance: ``obj`` with ``data`` applied (``obj`` itself is not modified)."""
    cls = type(obj)
    fields = _config_fields(cls)
    _check_mapping(data, prefix, cls)
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key(key, prefix, cls)
        _, tp = fields[key]
        changes[key] = _apply(tp, getattr(obj, key), value, _join(prefix, key), update)
    if not changes:
        return obj
    try:
        return dataclasses.replace(obj, **changes)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise _fail(prefix, f"cannot build {cls.__name__}: {exc}") from exc


def merge(base: T, data: Mapping[str, Any], *, prefix: str = "") -> T:
    """Return a new config: ``base`` with a (partial, nested) mapping applied.

    Nested dataclass fields are merged recursively, ``dict[K, V]`` fields are
    updated key by key (new keys added, existing ones merged), every other field
    is replaced (after type checking).

    Args:
        base: A dataclass instance; it is not modified, and the result shares
            no mutable state with it.
        data: Mapping of field name to new value; nested mappings for nested
            dataclasses.
        prefix: Dotted key of ``base`` inside the full config, for error messages.

    Returns:
        A new instance of ``type(base)``.

    Raises:
        ConfigError: On unknown keys or values of the wrong type.
    """
    if not (dataclasses.is_dataclass(base) and not isinstance(base, type)):
        raise TypeError(f"merge() expects a dataclass instance, got {type(base).__name__}")
    return _merge_dataclass(copy.deepcopy(base), data, prefix, update=True)


# --------------------------------------------------------------------------- #
# Validation
# --------------------------------------------------------------------------- #


def _literal_choices(tp: Any) -> tuple[tuple[Any, ...], bool] | None:
    """``(choices, nullable)`` for ``Literal[...]`` or ``Literal[...] | None``; None for any other annotation."""
    nullable = False
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = typing.get_args(tp)
        nullable = _NoneType in args
        options = [arg for arg in args if arg is not _NoneType]
        if len(options) != 1:
            return None
        tp = options[0]
    return (typing.get_args(tp), nullable) if _is_literal(tp) else None


@functools.lru_cache(maxsize=None)
def _field_ranges(cls: type) -> dict[str, Range]:
    """Field name -> its ``Range`` for the fields of dataclass ``cls`` annotated ``Annotated[..., Range(...)]``
    (also inside ``X | None``)."""
    ranges = {}
    for name, tp in typing.get_type_hints(cls, include_extras=True).items():
        candidates = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
        for candidate in candidates:
            if typing.get_origin(candidate) is Annotated:
                ranges.update({name: extra for extra in candidate.__metadata__ if isinstance(extra, Range)})
    return ranges


def _check_fields(obj: Any, path: str) -> None:
    """Raise ConfigError (key ``path.field``) for a ``Literal`` field of dataclass ``obj`` holding another value, or a
    ``Range`` field out of its bounds."""
    try:
        fields = _config_fields(type(obj))
        ranges = _field_ranges(type(obj))
    except (NameError, TypeError):  # annotations that do not resolve: not a schema node, nothing to check
        return
    for name, (_, tp) in fields.items():
        value = getattr(obj, name)
        spec = _literal_choices(tp)
        if spec is not None:
            choices, nullable = spec
            if not (_in_choices(value, choices) or (nullable and value is None)):
                raise _choice_error(_join(path, name), choices, value, nullable)
        bounds = ranges.get(name)
        if bounds is None or value is None:
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        if not all(isinstance(item, (int, float)) and bounds.holds(item) for item in items):
            nullable = _strip_optional(tp) is not tp
            each = "every item " if isinstance(value, (list, tuple)) else ""
            raise _fail(_join(path, name), f"{each}must be {bounds.describe()}{' or null' if nullable else ''}, "
                                           f"got {_short_repr(value)}")
        if bounds.ordered and list(items) != sorted(items):
            raise _fail(_join(path, name), f"must be in non-decreasing order, got {_short_repr(value)}")


def check_fields(obj: Any) -> None:
    """Check every ``Literal[...]`` field of dataclass ``obj`` against its choices and every ``Range`` field against
    its bounds.

    The loader checks these fields; call this from the ``validate()`` of a config that is also built directly in
    Python (``VICRegLConfig(preset="paper")``), so that a bad value fails there too. Nested dataclasses are not
    visited.

    Args:
        obj: A dataclass instance.

    Raises:
        ValueError: ``"<field>: must be one of 'a', 'b', got 'c'; did you mean 'a'?"`` or ``"<field>: must be >= 1,
            got 0"`` for the first bad field (a plain ``ValueError``, so that :func:`validate_config` prefixes it
            with the node's dotted path).
    """
    if not (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        raise TypeError(f"check_fields() expects a dataclass instance, got {type(obj).__name__}")
    try:
        _check_fields(obj, "")
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def _validate_node(obj: Any, path: str) -> None:
    """Post-order walk: validate children (fields, list/tuple items, dict values) first.

    Each dataclass node has its ``Literal`` and ``Range`` fields checked (a config built or changed in Python has not
    been through ``_coerce``) before its own ``validate()`` runs.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for field in dataclasses.fields(obj):
            _validate_node(getattr(obj, field.name), _join(path, field.name))
        _check_fields(obj, path)
        validate = getattr(obj, "validate", None)
        if callable(validate):
            try:
                validate()
            except ConfigError:
                raise
            except ValueError as exc:
                raise _validation_error(obj, path, exc) from exc
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            _validate_node(item, f"{path}[{i}]")
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            _validate_node(value, _join(path, key))


def _validation_error(obj: Any, path: str, exc: ValueError) -> ConfigError:
    """Prefix a ``validate()`` error with the node's dotted path.

    If the message starts with ``<field>:`` for a field of ``obj``, the error is
    attributed to that field (``optim`` + ``"lr: must be > 0"`` -> ``optim.lr: must be > 0``).
    """
    message = str(exc)
    head, sep, rest = message.partition(":")
    if sep and head.strip() in {f.name for f in dataclasses.fields(obj)}:
        return _fail(_join(path, head.strip()), rest.strip())
    return _fail(path, message)


def validate_config(cfg: Any) -> None:
    """Check the ``Literal`` and ``Range`` fields of every dataclass node of ``cfg``, then call its ``validate()``.

    Nodes are visited post-order (children before parents). A ``ValueError``
    raised by ``validate()`` becomes a :class:`ConfigError` prefixed with the
    node's dotted path (``<root>`` for the top-level config).

    Args:
        cfg: The config (a dataclass instance).

    Raises:
        ConfigError: If any ``validate()`` fails.
    """
    _validate_node(cfg, "")


# --------------------------------------------------------------------------- #
# Dotlist, YAML files, load/save
# --------------------------------------------------------------------------- #


def parse_dotlist(items: Sequence[str]) -> dict[str, Any]:
    """Parse CLI overrides ``key.sub=value`` into a nested dict.

    Values are parsed as YAML (safe loader), so ``0.1`` is a float, ``[224,96]``
    a list, ``null`` None and ``true`` a bool; ``1e-3`` is read as a float too.
    Quote a value to keep it a string (``name='1e-3'``). Later items win.

    Args:
        items: Strings such as ``["optim.lr=0.1", "data.sizes=[224,96]"]``.

    Returns:
        Nested dict, e.g. ``{"optim": {"lr": 0.1}, "data": {"sizes": [224, 96]}}``.

    Raises:
        ConfigError: If an item has no ``=``, an empty key part or an empty
            value, its value is not valid YAML, or a key is both a value and a
            parent of other keys.
    """
    if isinstance(items, str):
        raise TypeError("parse_dotlist() expects a sequence of strings, not a single string")
    result: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{item!r}: override must be a string of the form key.sub=value")
        if "=" not in item:
            raise ConfigError(f"{item}: invalid override {item!r}; expected the form key.sub=value (e.g. optim.lr=0.1)")
        raw_key, raw_value = item.split("=", 1)
        key = raw_key.strip()
        parts = key.split(".")
        if not key or any(not part.strip() for part in parts):
            raise ConfigError(f"{key or item}: invalid key in override {item!r}; expected the form key.sub=value")
        parts = [part.strip() for part in parts]
        key = ".".join(parts)
        if not raw_value.strip():
            raise ConfigError(f"{key}: empty value in override {item!r}; use {key}=null for None or {key}=\"''\" for an empty string")
        try:
            value = _yaml_load(raw_value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{key}: cannot parse value {raw_value!r} as YAML: {exc}") from exc
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(parts[: depth + 1])}: set to a value by one override and used as a parent by {item!r}")
            node = child
        node[parts[-1]] = value
    return result


SHIPPED_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
"""The configs installed with the package (``densessl/configs``; the checkout's top-level ``configs`` links to it)."""


def resolve_config_path(path: str | os.PathLike[str]) -> str:
    """An existing file as given, else the config of that name shipped with densessl.

    ``configs/pretrain/x.yaml`` and ``pretrain/x.yaml`` both find ``<site-packages>/densessl/configs/pretrain/x.yaml``
    when no such file exists relative to the working directory, so the console commands work outside a checkout.
    A path that matches nothing is returned unchanged (the caller reports it as missing).
    """
    path = os.fspath(path)
    if os.path.isfile(path) or os.path.isabs(path):
        return path
    relative = path[len("configs/"):] if path.startswith("configs/") else path
    shipped = os.path.join(SHIPPED_CONFIGS, relative)
    return shipped if os.path.isfile(shipped) else path


def _load_yaml_file(path: str, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a YAML config file, resolving ``_base_`` recursively.

    Args:
        path: File to read.
        chain: Real paths of the files currently including this one (cycle detection).

    Returns:
        The merged mapping (bases first, this file on top), without ``_base_``.

    Raises:
        ConfigError: Missing file, YAML syntax error (with line and column),
            top level not a mapping, bad ``_base_`` value, or an inclusion cycle.
    """
    real = os.path.realpath(path)
    if real in chain:
        cycle = " -> ".join([*chain[chain.index(real):], real])
        raise ConfigError(f"{path}: _base_ inclusion cycle: {cycle}")
    if not os.path.isfile(path):
        included_by = f" (in _base_ of {chain[-1]})" if chain else ""
        shipped = "" if chain or os.path.isabs(path) else f"; the configs shipped with densessl are in {SHIPPED_CONFIGS}"
        raise ConfigError(f"{path}: config file not found{included_by}{shipped}")
    with open(path, encoding="utf-8") as stream:
        text = stream.read()
    try:
        data = _yaml_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level of a config file must be a mapping, got {type(data).__name__}")

    bases = data.pop(_BASE_KEY, None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"{_BASE_KEY}: in {path}: expected a path or a list of paths, got {_short_repr(bases)}")
    merged: dict[str, Any] = {}
    here = os.path.dirname(os.path.abspath(path))
    for base in bases:
        base_path = os.path.join(here, os.path.expanduser(base))
        merged = _deep_merge(merged, _load_yaml_file(base_path, (*chain, real)))
    return _deep_merge(merged, data)


def load_config(
    cls: type[T],
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    updates: Mapping[str, Any] | None = None,
) -> T:
    """Load a config: defaults <- ``_base_`` files <- YAML file <- CLI overrides <- ``updates``.

    After building, ``validate()`` is called on every dataclass node that
    defines it (children first), see :func:`validate_config`.

    Args:
        cls: The root config dataclass.
        path: YAML file listing what differs from the defaults; ``None`` for
            defaults only. An empty file is allowed.
        overrides: Dotlist such as ``["optim.lr=0.1"]`` (see :func:`parse_dotlist`).
        updates: Nested mapping applied last, with :func:`merge` (e.g. a tool's
            own command-line flags, ``{"knn": {"k": 5}}``).

    Returns:
        The validated config.

    Raises:
        ConfigError: For any problem with the file, the overrides or the values;
            the message names the file or the dotted key.
    """
    data = _load_yaml_file(resolve_config_path(path)) if path is not None else {}
    cfg = from_dict(cls, data)
    if overrides:
        cfg = merge(cfg, parse_dotlist(overrides))
    if updates:
        cfg = merge(cfg, updates)
    validate_config(cfg)
    return cfg


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: dotted keys of a plain config dict (lists, other values and empty
    mappings kept as they are)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


def to_dict(cfg: Any) -> dict[str, Any]:
    """Convert a config to plain Python types (dict/list/str/int/float/bool/None).

    Dataclasses become dicts in field order (``init=False`` fields are left
    out), tuples become lists, enums their values and paths strings. The result
    can be dumped to YAML and stored in a checkpoint that loads with
    ``torch.load(..., weights_only=True)``.

    Args:
        cfg: A dataclass instance (or a mapping).

    Returns:
        A new nested dict.

    Raises:
        ConfigError: If a value cannot be turned into a plain type.
    """
    plain = _to_plain(cfg, "")
    if not isinstance(plain, dict):
        raise TypeError(f"to_dict() expects a dataclass instance or a mapping, got {type(cfg).__name__}")
    return plain


def _to_plain(value: Any, key: str) -> Any:
    """Recursive worker of :func:`to_dict`."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _to_plain(getattr(value, f.name), _join(key, f.name))
            for f in dataclasses.fields(value)
            if f.init
        }
    if isinstance(value, enum.Enum):
        return _to_plain(value.value, key)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {_to_plain(k, f"{key} (key {k!r})"): _to_plain(v, _join(key, k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(item, f"{key}[{i}]") for i, item in enumerate(value)]
    raise _fail(key, f"cannot convert {type(value).__name__} to a plain type: {_short_repr(value)}")


def save_config(cfg: Any, path: str | os.PathLike[str]) -> None:
    """Write ``cfg`` as YAML (keys in field order), atomically.

    Written with ``densessl.atomic.atomic_write_text``: readers never see a
    partial file. Parent directories are created as needed.

    Args:
        cfg: The config (a dataclass instance or a mapping).
        path: Destination file.
    """
    text = yaml.dump(
        to_dict(cfg),
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
    )
    atomic_write_text(path, text)
