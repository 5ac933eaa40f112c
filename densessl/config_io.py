"""Loading and saving dataclass configs: YAML diffs with ``_base_``, ``key.sub=value`` overrides, ``validate()``.

Precedence: defaults < ``_base_`` files (relative to the including file, merged in order) < the YAML file < CLI
overrides < a tool's flags. Mappings merge key by key, other values (lists too) are replaced; a ``dict`` field
written in YAML is its whole value (a saved config reloads exactly), an override updates it key by key. Types,
``Literal`` choices and ``Range`` bounds are checked by pydantic through ``densessl.schema``; unknown keys get "did
you mean"; every node's ``validate()`` runs, children first. YAML: safe, ``1e-3`` a float, a duplicate key an error.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import glob
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import yaml

from densessl import schema
from densessl.atomic import atomic_write_text
from densessl.schema import ConfigError, fail

__all__ = ["SHIPPED_CONFIGS", "flatten", "from_dict", "load_config", "merge", "parse_dotlist",
           "resolve_config_path", "save_config", "validate_config"]

T = TypeVar("T")
SHIPPED_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
"""The configs installed with the package (``densessl/configs``; the checkout's top-level ``configs`` links to it)."""

_SCI_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")  # YAML 1.1 wants a dot in 1.0e-3


class _Loader(yaml.SafeLoader):
    """Safe loader that reads ``1e-3`` as a float and refuses a key given twice (plain YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first defined on line {seen[key]}); merge the two entries",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


class _Dumper(yaml.SafeDumper):
    """Quotes the strings ``_Loader`` would read as floats."""


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _SCI_FLOAT, list("-+0123456789"))


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in override.items():
        both = isinstance(value, Mapping) and isinstance(result.get(key), Mapping)
        result[key] = _deep_merge(result[key], value) if both else value
    return result


def _prepare(cls: type, data: Any, prefix: str, base: Any, update: bool) -> dict[str, Any]:
    """``data`` (for dataclass ``cls``) as the plain mapping pydantic builds: unknown keys refused, nested mappings
    put on top of the current value (``base``, or the field's default), ``Literal`` choices checked strictly."""
    if not isinstance(data, Mapping):
        raise schema.type_error(prefix, schema.type_name(cls), data)
    fields = schema.config_fields(cls)
    out = schema.to_plain(base, prefix) if base is not None else {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            where = f"'{prefix}'" if prefix else "the top level"
            raise fail(full, f"unknown key{f'; did you mean {close[0]!r}?' if close else '.'} Valid keys at {where} "
                             f"({cls.__name__}): {', '.join(fields) or '(none)'}")
        field, tp = fields[key]
        inner = schema.strip_optional(tp)
        current = getattr(base, key) if base is not None else _default(field)
        if isinstance(value, Mapping) and schema.is_dataclass_type(inner):
            out[key] = _prepare(inner, value, full, current if isinstance(current, inner) else None, update)
        elif update and isinstance(value, Mapping) and isinstance(current, Mapping):
            out[key] = _deep_merge(schema.to_plain(current, full), schema.to_plain(value, full))
        else:
            schema.check_choice(tp, value, full)
            out[key] = schema.to_plain(value, full)
    return out


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def from_dict(cls: type[T], data: Mapping[str, Any], *, prefix: str = "") -> T:
    """Dataclass ``cls`` from a (partial, nested) mapping over its defaults; ConfigError for an unknown key, a value
    of the wrong type, outside its bounds or choices, or a missing required one."""
    return schema.build(cls, _prepare(cls, data, prefix, None, update=False), prefix)


def merge(base: T, data: Mapping[str, Any], *, prefix: str = "") -> T:
    """A new config: ``base`` (not modified) with a partial mapping applied; ``dict`` fields updated key by key."""
    if not (dataclasses.is_dataclass(base) and not isinstance(base, type)):
        raise TypeError(f"merge() expects a dataclass instance, got {type(base).__name__}")
    if not data:
        return copy.deepcopy(base)
    return schema.build(type(base), _prepare(type(base), data, prefix, base, update=True), prefix)


def validate_config(cfg: Any, path: str = "") -> None:
    """Check the ``Literal`` / ``Range`` fields of every dataclass node (for configs built in Python), then call its
    ``validate()``, children first; a ``ValueError`` becomes a ConfigError at the node (or its field: ``"f: .."``)."""
    if isinstance(cfg, (list, tuple)):
        for i, item in enumerate(cfg):
            validate_config(item, f"{path}[{i}]")
    elif isinstance(cfg, Mapping):
        for key, value in cfg.items():
            validate_config(value, f"{path}.{key}" if path else str(key))
    if not (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)):
        return
    names = [f.name for f in dataclasses.fields(cfg)]
    for name in names:
        validate_config(getattr(cfg, name), f"{path}.{name}" if path else name)
    schema.check_node(cfg, path)
    try:
        getattr(cfg, "validate", lambda: None)()
    except ConfigError:
        raise
    except ValueError as exc:
        head, sep, rest = str(exc).partition(":")
        if sep and head.strip() in names:
            raise fail(f"{path}.{head.strip()}" if path else head.strip(), rest.strip()) from exc
        raise fail(path, str(exc)) from exc


def parse_dotlist(items: Sequence[str]) -> dict[str, Any]:
    """``["optim.lr=0.1", "data.sizes=[224,96]"]`` -> ``{"optim": {"lr": 0.1}, "data": {"sizes": [224, 96]}}``; values
    are YAML (``null``, ``[1,2]``, ``1e-3`` a float; quote to keep a string), later items win. Raises ConfigError."""
    if isinstance(items, str):
        raise TypeError("parse_dotlist() expects a sequence of strings, not a single string")
    result: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{item!r}: override must be a string of the form key.sub=value")
        if "=" not in item:
            raise ConfigError(f"{item}: invalid override {item!r}; expected the form key.sub=value (e.g. optim.lr=0.1)")
        raw_key, raw_value = item.split("=", 1)
        parts = [part.strip() for part in raw_key.strip().split(".")]
        key = ".".join(parts)
        if not raw_key.strip() or not all(parts):
            raise ConfigError(f"{raw_key.strip() or item}: invalid key in override {item!r}; expected the form "
                              "key.sub=value")
        if not raw_value.strip():
            raise ConfigError(f"{key}: empty value in override {item!r}; use {key}=null for None or {key}=\"''\" for "
                              "an empty string")
        try:
            value = _yaml_load(raw_value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{key}: cannot parse value {raw_value!r} as YAML: {exc}") from exc
        node = result
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{'.'.join(parts[: depth + 1])}: set to a value by one override and used as a "
                                  f"parent by {item!r}")
        node[parts[-1]] = value
    return result


def resolve_config_path(path: str | os.PathLike[str]) -> str:
    """An existing file as given, else the shipped config of that name (``configs/pretrain/x.yaml``,
    ``pretrain/x.yaml`` or the bare ``x``), so the console commands work outside a checkout; else ``path``."""
    path = os.fspath(path)
    if os.path.isfile(path) or os.path.isabs(path):
        return path
    shipped = os.path.join(SHIPPED_CONFIGS, path.removeprefix("configs/"))
    bare = sorted(glob.glob(os.path.join(SHIPPED_CONFIGS, "*", f"{path.removesuffix('.yaml')}.yaml")))
    return shipped if os.path.isfile(shipped) else bare[0] if os.sep not in path and len(bare) == 1 else path


def _load_yaml_file(path: str, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """A YAML config file with its ``_base_`` files merged under it (``chain``: the including files' real paths)."""
    real = os.path.realpath(path)
    if real in chain:
        raise ConfigError(f"{path}: _base_ inclusion cycle: {' -> '.join([*chain[chain.index(real):], real])}")
    if not os.path.isfile(path):
        included_by = f" (in _base_ of {chain[-1]})" if chain else ""
        shipped = ("" if chain or os.path.isabs(path)
                   else f"; the configs shipped with densessl are in {SHIPPED_CONFIGS}")
        raise ConfigError(f"{path}: config file not found{included_by}{shipped}")
    with open(path, encoding="utf-8") as stream:
        text = stream.read()
    try:
        data = _yaml_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
        raise ConfigError(f"{where}: YAML syntax error: {getattr(exc, 'problem', None) or exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level of a config file must be a mapping, got {type(data).__name__}")
    bases = data.pop("_base_", None)
    if bases is None:
        return data
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"_base_: in {path}: expected a path or a list of paths, got {schema.short_repr(bases)}")
    merged: dict[str, Any] = {}
    for base in bases:
        base_path = os.path.join(os.path.dirname(os.path.abspath(path)), os.path.expanduser(base))
        merged = _deep_merge(merged, _load_yaml_file(base_path, (*chain, real)))
    return _deep_merge(merged, data)


def load_config(cls: type[T], path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = (),
                updates: Mapping[str, Any] | None = None) -> T:
    """defaults <- ``path`` (with its ``_base_`` files; None: defaults only) <- ``overrides`` (``key.sub=value``)
    <- ``updates`` (a tool's flags as a nested mapping), then :func:`validate_config`. Raises ConfigError."""
    data = _load_yaml_file(resolve_config_path(path)) if path is not None else {}
    cfg = from_dict(cls, data)
    for change in (parse_dotlist(overrides) if overrides else None, updates):
        if change:
            cfg = merge(cfg, change)
    validate_config(cfg)
    return cfg


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists, other values and empty mappings kept as they are)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        flat.update(flatten(value, dotted) if isinstance(value, Mapping) and value else {dotted: value})
    return flat


def save_config(cfg: Any, path: str | os.PathLike[str]) -> None:
    """``cfg`` as YAML in field order, written atomically (parent folders created)."""
    text = yaml.dump(schema.to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)
    atomic_write_text(path, text)
