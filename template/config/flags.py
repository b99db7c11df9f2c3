"""Command-line flags derived from a pydantic model's fields, so a config is spelled once: the model.

Each field becomes ``--kebab-name`` (or the name given in ``flags``) with ``dest`` the field's name; the
argparse type follows the annotation (``int``, ``float``, ``str``, or a ``Literal`` whose values become
``choices``) and the help is the field's ``description``, its default and its bounds. Bounds and
cross-field rules are checked by the model itself, not by argparse, so they are written once too.

A flag left out is *absent* from the parsed namespace (``argparse.SUPPRESS``) rather than set to the
model's default, so callers can layer values: ``ModelFlags.build(ns, base)`` is
``model(**base, **given)``, explicit flags winning, and the model's own defaults (or validators, such
as a preset's training defaults) filling the rest::

    TRAINING = ModelFlags(TrainingConfig, choices={"preset": list(PRESETS)})
    TRAINING.add_to(parser.add_argument_group("training"))
    config = TRAINING.build(parser.parse_args(argv), base=from_file)  # ValueError "--flag: reason"
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel, ValidationError

from template.config.argtypes import integer, number

__all__ = ["ModelFlags"]

_TYPES: dict[type, tuple[Callable[[Any], Any], str | None]] = {
    int: (integer, "N"),
    float: (number, "X"),
    str: (str, None),
}
_BOUNDS = ((at.Gt, "gt", ">"), (at.Ge, "ge", ">="), (at.Lt, "lt", "<"), (at.Le, "le", "<="))


class ModelFlags:
    """The flags of ``model``'s fields (all but ``exclude``).

    ``flags`` renames fields' flags (``{"heartbeat_timeout_s": "--heartbeat-timeout"}``), ``choices``
    restricts a ``str`` field's values, ``default_help`` replaces the default shown in ``--help``
    (for a default that depends on other fields).
    """

    def __init__(
        self,
        model: type[BaseModel],
        *,
        flags: Mapping[str, str] | None = None,
        choices: Mapping[str, Sequence[Any]] | None = None,
        default_help: Mapping[str, str] | None = None,
        exclude: Iterable[str] = (),
    ) -> None:
        self.model = model
        skip = set(exclude)
        self.fields = {name: info for name, info in model.model_fields.items() if name not in skip}
        for table in (flags or {}, choices or {}, default_help or {}):
            unknown = set(table) - set(self.fields)
            if unknown:
                raise ValueError(f"{model.__name__} has no field(s) {', '.join(sorted(unknown))}")
        self.flags = {name: (flags or {}).get(name, "--" + name.replace("_", "-")) for name in self.fields}
        self.choices = dict(choices or {})
        self.default_help = dict(default_help or {})

    def flag(self, field: str) -> str:
        """The flag of ``field`` (``"--inner-steps"``)."""
        return self.flags[field]

    def argument(self, field: str) -> dict[str, Any]:
        """The ``add_argument`` keywords of ``field``'s flag."""
        info = self.fields[field]
        annotation = info.annotation
        choices = self.choices.get(field)
        if get_origin(annotation) is Literal:
            choices = choices or get_args(annotation)
            annotation = type(choices[0])
        elif get_origin(annotation) in (Union, UnionType) and type(None) in get_args(annotation):
            (annotation,) = [a for a in get_args(annotation) if a is not type(None)]  # Optional[T]: a T when given
        if annotation not in _TYPES:
            raise TypeError(f"no flag type for {self.model.__name__}.{field}: {annotation!r}")
        convert, metavar = _TYPES[annotation]
        kwargs: dict[str, Any] = {"dest": field, "type": convert, "default": argparse.SUPPRESS, "help": _help(info)}
        if choices is not None:
            kwargs["choices"] = list(choices)
        elif metavar is not None:
            kwargs["metavar"] = metavar
        default = self.default_help.get(field, None if info.is_required() else _shown(info.default))
        if default is not None:
            kwargs["help"] += f" (default: {_escape(default)})"
        return kwargs

    def add_to(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        """Add every field's flag to ``parser`` (or an argument group)."""
        for field in self.fields:
            parser.add_argument(self.flags[field], **self.argument(field))

    def given(self, ns: Any) -> dict[str, Any]:
        """The fields whose flags were given, from a parsed ``argparse.Namespace`` or ``Config``."""
        return {field: getattr(ns, field) for field in self.fields if field in ns}

    def build(self, ns: Any, base: Mapping[str, Any] | None = None) -> BaseModel:
        """``model(**base, **given)``; ``ValueError("--flag: reason")`` (one line) if the model refuses it."""
        given = self.given(ns)
        try:
            return self.model(**{**(base or {}), **given})
        except ValidationError as error:
            first = error.errors()[0]
            field = str(first["loc"][0]) if first["loc"] else ""
            where = self.flags[field] if field in given else field
            raise ValueError(f"{where}: {first['msg']}" if where else first["msg"]) from None


def _shown(value: Any) -> str:
    # 30 rather than 30.0, 0.001 rather than 1e-03
    return f"{value:g}" if isinstance(value, float) else str(value)


def _help(info: Any) -> str:
    text = _escape(info.description or "")
    bounds = [
        f"{sign} {_shown(getattr(m, attr))}" for m in info.metadata for cls, attr, sign in _BOUNDS if isinstance(m, cls)
    ]
    if bounds:
        text += f" [{', '.join(bounds)}]"
    return text.strip()


def _escape(text: str) -> str:
    return text.replace("%", "%%")  # argparse %-formats help strings
