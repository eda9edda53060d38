"""The configuration's machinery: YAML read safely, mapped onto typed dataclasses, with every problem listed.

A field's type says what it accepts: ``int``, ``float`` (an int or "1e-4" is taken as a float), ``bool``,
``str``, ``Literal[...]``, ``X | None``, ``list[X]``, a dataclass (a section), and ``Annotated[X, rule, ...]``
where each rule (``AtLeast``, ``Positive``, ``Between``, ``Odd``) checks the value once its type is right.
``Annotated[Settings, OneOf(REGISTRY)]`` is a choice that owns its settings: the mapping's ``name`` picks the
registry entry, whose ``settings`` dataclass then types the other keys (a bare name is ``{name: NAME}``).

Why not pydantic v2: it skips a model's cross-field checks while any of its fields is wrong, so a user would
learn of half the problems only on the second run; this module checks every value it can and lists all
problems at once, with the closest valid key for a mistyped one (tried; see docs/configuration.md).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import reprlib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml

from ternaus.errors import ConfigError

__all__ = ["AtLeast", "Positive", "Between", "Odd", "OneOf", "quote", "from_dict", "read_yaml_text", "load_yaml",
           "yaml_problem", "set_path", "parse_overrides", "flatten", "type_hints", "suggest", "MAX_YAML_NODES",
           "MAX_YAML_DEPTH"]

# ---------------------------------------------------------------- rules on a field's value


@dataclass(frozen=True)
class AtLeast:
    """The value is ``minimum`` or more (``AtLeast(1)``: a count; ``AtLeast(0)``: a size that may be zero)."""

    minimum: float

    def problem(self, value: Any) -> str | None:
        return None if value >= self.minimum else f"must be {_at_least(self.minimum)}, got {quote(value)}"


def _at_least(minimum: float) -> str:
    return "0 or more" if minimum == 0 else f"at least {minimum:g}"


@dataclass(frozen=True)
class Positive:
    """The value is more than 0 (a rate, a factor, a norm)."""

    def problem(self, value: Any) -> str | None:
        return None if value > 0 else f"must be positive, got {quote(value)}"


@dataclass(frozen=True)
class Between:
    """The value lies between ``low`` and ``high``; each end included unless ``open_low`` / ``open_high``.
    ``what``: the sentence's subject when the bounds need a reason ("blends w * A + (1 - w) * B, w")."""

    low: float
    high: float
    open_low: bool = False
    open_high: bool = False
    what: str = ""

    def problem(self, value: Any) -> str | None:
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        if above and below:
            return None
        span = f"{'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"
        return f"{self.what + ' ' if self.what else ''}must lie in {span}, got {quote(value)}"


@dataclass(frozen=True)
class Odd:
    """An odd integer (a pooling window that keeps the map's size)."""

    def problem(self, value: Any) -> str | None:
        return None if value % 2 else f"{value} is even; an odd value keeps the pooled map's size: use {value + 1}"


@dataclass(frozen=True)
class OneOf:
    """A choice that owns its settings: ``registry[name].settings`` is the dataclass of the section's keys."""

    registry: Mapping[str, Any]


# ---------------------------------------------------------------- messages

_SHORT = reprlib.Repr()  # (Python 3.11's takes no arguments)
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxtuple = 3, 6, 6, 6
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 80, 80, 40


def quote(value: Any) -> str:
    """A value as a message quotes it: its repr, shortened (a value can be huge; the message stays a line)."""
    return _SHORT.repr(value)


def suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


# ---------------------------------------------------------------- reading YAML safely

MAX_YAML_NODES = 10_000  # values after aliases are expanded; the shipped configs hold about 150
MAX_YAML_DEPTH = 50  # the configuration is 3 levels deep


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a document whose aliases expand to more than MAX_YAML_NODES values (a
    few hundred bytes of nested aliases can stand for billions of values), that refers to itself, or that is
    nested deeper than MAX_YAML_DEPTH (the composer recurses)."""

    depth = 0

    def compose_document(self):
        node = super().compose_document()
        _check_expanded_size(node)
        return node

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise yaml.YAMLError(f"it is nested more than {MAX_YAML_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _check_expanded_size(root: yaml.Node) -> None:
    """Count the values ``root`` stands for with every alias expanded, without expanding any."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    on_path: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        if children_done:
            on_path.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[id(node)] > MAX_YAML_NODES:
                raise yaml.YAMLError(f"its aliases (*name) expand to more than {MAX_YAML_NODES:,} values; "
                                     "write the values out")
            continue
        if id(node) in sizes:
            continue
        if id(node) in on_path:
            raise yaml.YAMLError("an alias (*name) refers to the value that contains it")
        on_path.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with aliases and nesting bounded (what yaml.load does, with this safe loader)."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's message on one line, shortened."""
    text = " ".join(str(err).split())
    return text if len(text) <= 200 else text[:200] + " ..."


def read_yaml_text(text: str, where: str) -> dict:
    """The mapping a config text holds; anything else is a ConfigError naming ``where``."""
    try:
        data = load_yaml(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where} is not valid YAML: {yaml_problem(err)}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{where} must hold a mapping of sections (output_dir: ..., data: ...), got {quote(data)}")
    return data or {}


# ---------------------------------------------------------------- mapping dicts onto dataclasses


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    # Cached: evaluating the annotations is half the cost of loading a config.
    return typing.get_type_hints(cls, include_extras=True)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _is_choice(tp: Any) -> bool:
    """A choice with settings (``Annotated[..., OneOf(...)]``)."""
    return typing.get_origin(tp) is Annotated and any(isinstance(r, OneOf) for r in typing.get_args(tp)[1:])


def _is_section(tp: Any) -> bool:
    """A dataclass, or a choice with settings."""
    return _is_choice(tp) or _is_dataclass_type(tp)


def _keeps_good_parts(tp: Any, coerced: Any) -> bool:
    """Whether a value with problems inside still stands: a section (its bad keys took their defaults) or a list
    of sections (ensemble.members)."""
    if _is_section(tp):
        return coerced is not None
    if typing.get_origin(tp) is list and _is_dataclass_type(typing.get_args(tp)[0]):
        return isinstance(coerced, list) and all(_is_dataclass_type(type(item)) for item in coerced)
    return False


def _default_name(cls: type, key: str) -> str | None:
    spec = next(f for f in dataclasses.fields(cls) if f.name == key)
    default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
    return getattr(default, "name", None)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _type_name(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", None) or str(tp)


def _coerce_annotated(value: Any, tp: Any, key: str, errors: list[str]) -> Any:
    base, *rules = typing.get_args(tp)
    choice = next((r for r in rules if isinstance(r, OneOf)), None)
    if choice is not None:
        return _from_choice(value, choice, key, errors)
    found: list[str] = []
    out = _coerce(value, base, key, found)
    if found:
        errors += found
        return out
    if isinstance(out, float) and not math.isfinite(out):
        errors.append(f"{key}: must be a finite number, got {out}")
        return out
    if out is not None:
        errors += [f"{key}: {p}" for rule in rules if hasattr(rule, "problem") for p in [rule.problem(out)] if p]
    return out


def _coerce(value: Any, tp: Any, key: str, errors: list[str]) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    if _is_dataclass_type(tp):  # a list's items can be sections too (ensemble.members)
        return from_dict(tp, value, f"{key}.", errors)
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _coerce_annotated(value, tp, key, errors)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            trial: list[str] = []
            out = _coerce(value, arg, key, trial)
            if not trial:
                return out
            if typing.get_origin(arg) is Annotated and _type_matches(value, arg):
                errors += trial  # the right type with a value out of range: say which rule
                return value
        errors.append(f"{key}: expected {_type_name(tp)}, got {quote(value)}")
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        if not any(value == a and type(value) is type(a) for a in allowed):
            errors.append(f"{key}: must be one of {', '.join(map(str, allowed))}, got {quote(value)}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            errors.append(f"{key}: expected a list, got {quote(value)}")
            return value
        return [_coerce(v, item_tp, f"{key}[{i}]", errors) for i, v in enumerate(value)]
    return _coerce_scalar(value, tp, key, errors)


def _type_matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` has the type under ``tp``'s rules (so a failure there is a rule's, not the type's)."""
    trial: list[str] = []
    _coerce(value, typing.get_args(tp)[0], "", trial)
    return not trial


def _coerce_scalar(value: Any, tp: Any, key: str, errors: list[str]) -> Any:
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads "1e-4" (no dot) as a string; it is meant as a number.
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and (type(value) is not tp):
        errors.append(f"{key}: expected {tp.__name__}, got {quote(value)}")
    return value


def _from_choice(value: Any, choice: OneOf, key: str, errors: list[str]) -> Any:
    """A choice's section: ``{name: NAME, key: value, ...}`` (or NAME alone) onto ``registry[NAME].settings``."""
    data = {"name": value} if isinstance(value, str) else value
    if not isinstance(data, dict):
        errors.append(f"{key}: expected a name or a mapping with a name, got {quote(value)}")
        return None
    name = data.get("name")
    if not (isinstance(name, str) and name in choice.registry):
        errors.append(f"{key}.name: must be one of {', '.join(choice.registry)}, got {quote(name)}"
                      + (suggest(name, list(choice.registry)) if isinstance(name, str) else ""))
        return None
    settings = choice.registry[name].settings
    unknown = [k for k in data if k not in type_hints(settings)]
    for k in unknown:
        others = sorted({n for n, spec in choice.registry.items() if k in type_hints(spec.settings)})
        takes = f"; {', '.join(others)} take(s) it" if others else suggest(str(k), list(type_hints(settings)))
        errors.append(f"{key}.{k}: {name} has no such setting{takes}")
    return from_dict(settings, {k: v for k, v in data.items() if k not in unknown}, f"{key}.", errors)


def from_dict(cls: type, data: Any, prefix: str, errors: list[str]) -> Any:
    """``cls`` (a dataclass) from ``data``; each problem is appended to ``errors`` and the field's default stands
    in, so that a dataclass never holds a value of the wrong kind."""
    if not isinstance(data, dict):
        errors.append(f"{prefix[:-1] or 'config'}: expected a mapping of keys, got {quote(data)}")
        return cls()
    hints = type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in hints:
            errors.append(f"unknown key '{full}'{suggest(str(key), list(hints))}")
            continue
        if _is_choice(hints[key]) and isinstance(value, dict) and "name" not in value:
            value = {"name": _default_name(cls, key), **value}  # settings of the default choice
        found: list[str] = []
        coerced = _coerce(value, hints[key], full, found)
        errors += found
        if not found or _keeps_good_parts(hints[key], coerced):
            kwargs[key] = coerced  # a section keeps its good keys, so that the checks across keys still run
    return cls(**kwargs)


# ---------------------------------------------------------------- overrides


def set_path(tree: dict, dotted: str, value: Any, choices: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """``tree[a][b][c] = value`` for ``"a.b.c"``. ``choices``: the registries of the choices with settings, by
    dotted key. Such a choice given by its name alone is ``{name: NAME}``; naming another one (``train.loss=X`` or
    ``train.loss.name=X``) keeps only the settings the new one takes."""
    choices = choices or {}
    node = tree
    parts = dotted.split(".")
    for depth, part in enumerate(parts[:-1]):
        if ".".join(parts[:depth + 1]) in choices and isinstance(node.get(part), str):
            node[part] = {"name": node[part]}
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
    section = dotted if dotted in choices else dotted.removesuffix(".name") if dotted.endswith(".name") else None
    if section in choices and isinstance(value, str):
        holder = node if section == dotted else _parent(tree, section)
        last = section.rsplit(".", 1)[-1]
        holder[last] = _switched(holder.get(last), value, choices[section])
        return
    node[parts[-1]] = value


def _parent(tree: dict, dotted: str) -> dict:
    node = tree
    for part in dotted.split(".")[:-1]:
        node = node.setdefault(part, {})
    return node


def _switched(current: Any, name: str, registry: Mapping[str, Any]) -> dict:
    """A choice's section after naming ``name``: the settings of ``current`` that ``name``'s settings also have."""
    old = current if isinstance(current, dict) else {}
    takes = type_hints(registry[name].settings) if name in registry else {}
    return {"name": name, **{k: v for k, v in old.items() if k != "name" and k in takes}}


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """``["train.epochs=3", "data.input_size=[128,192]"]`` -> pairs; values are parsed as YAML."""
    pairs = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {quote(item)} is not KEY=VALUE (for example train.epochs=10)")
        try:
            value = load_yaml(raw) if raw != "" else None
        except yaml.YAMLError as err:
            raise ConfigError(f"override {quote(item)}: the value is not valid YAML ({yaml_problem(err)}); "
                              "correct it, or put a text value in quotes") from None
        pairs.append((key.strip(), value))
    return pairs


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
