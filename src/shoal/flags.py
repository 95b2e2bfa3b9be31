"""Command-line options declared once, by the config dataclasses they fill.

A config dataclass already says what an option needs: the field's name, type and default, and
the docstring under the field (read from the source by ``field_docs``). ``config_options``
turns one into a typer command's options, so a default or a help text cannot differ between
the library and the command line; ``shoal serve`` builds its argparse flags from
``ServeConfig``'s docstrings the same way. Where the command line differs from the field (an
older option name, a unit, a folder held as a string) a ``Flag`` says so, next to the command.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, Optional, TypeVar

R = TypeVar("R")


def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring of a config dataclass (for ``--help`` texts), read from the
    source, whitespace collapsed."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for prev, node in zip(body, body[1:]):
        if (
            isinstance(prev, ast.AnnAssign)
            and isinstance(prev.target, ast.Name)
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
        ):
            docs[prev.target.id] = " ".join(str(node.value.value).split())
    return docs


@dataclasses.dataclass(frozen=True)
class Flag:
    """How one field appears on the command line, where that differs from the field."""

    aliases: tuple[str, ...] = ()
    """Other option names that set the field, e.g. ('--students',) for ``n_students``."""
    type: Any = None
    """The type the option parses (``Path`` for a folder the config keeps as a string);
    None: the field's own type."""
    parse: Callable[[Any], Any] | None = None
    """Turns the parsed value into the field's (a change of unit; 0 meaning None); not
    called when the option is left unset (None)."""
    help: str | None = None
    """Replaces the field's docstring, where the option's unit differs from the field's."""


FOLDER = Flag(type=Path, parse=str)
"""A folder the config holds as a string."""
ZERO_IS_NONE = Flag(parse=lambda value: value or None)
"""An optional count or rate where 0 on the command line means unset (None)."""


@dataclasses.dataclass(frozen=True)
class _Option:
    """One generated option: the field it sets and its typer parameter."""

    field: str
    section: str | None  # the nested config field it belongs to ('train'); None: the top
    parameter: inspect.Parameter
    parse: Callable[[Any], Any] | None


def config_options(
    cls: type, *, flags: Mapping[str, Flag] | None = None, skip: Collection[str] = ()
) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """One typer option per field of ``cls``; a field holding a config dataclass (such as
    ``train: TrainConfig``) adds its fields too, with the outer default's values.

    The decorated function takes the built config first, then options of its own::

        @app.command()
        @config_options(FinetuneConfig, flags={"out": FOLDER})
        def finetune(config: FinetuneConfig) -> None: ...

    Args:
        cls: the config dataclass; every field it exposes needs a docstring.
        flags: per field name, how its option differs from the field.
        skip: fields left out (they keep their defaults).
    """
    flags = dict(flags or {})
    options = _options(cls, flags, frozenset(skip))
    names = [o.field for o in options]
    unknown = set(flags) - set(names)
    if unknown or len(set(names)) != len(names):
        raise TypeError(f"{cls.__name__}: no field for flags {sorted(unknown)}, or a name twice")

    def decorate(fn: Callable[..., R]) -> Callable[..., R]:
        hints = typing.get_type_hints(fn)
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, Any))
            for p in list(inspect.signature(fn).parameters.values())[1:]
        ]
        params = [o.parameter for o in options] + own

        def command(**values: Any) -> R:
            return fn(_build(cls, options, values), **values)

        command.__name__, command.__qualname__ = fn.__name__, fn.__qualname__
        command.__doc__, command.__module__ = fn.__doc__, fn.__module__
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return ...  # typer's "required"


def _options(
    cls: type,
    flags: Mapping[str, Flag],
    skip: frozenset[str],
    section: str | None = None,
    defaults: Any = None,
) -> list[_Option]:
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    options: list[_Option] = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = _default(f) if defaults is None else getattr(defaults, f.name)
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            options += _options(kind, flags, skip, f.name, default)  # type: ignore[arg-type]
            continue
        if f.name not in docs:
            raise TypeError(f"{cls.__name__}.{f.name} needs a docstring: it is its --help")
        flag = flags.get(f.name, Flag())
        parameter = _parameter(f.name, kind, default, flag.help or docs[f.name], flag)
        options.append(_Option(f.name, section, parameter, flag.parse))
    return options


def _parameter(name: str, kind: Any, default: Any, help: str, flag: Flag) -> inspect.Parameter:
    """The typer parameter of one field: ``--field-name`` (``--x/--no-x`` for a bool)."""
    import typer  # here, so that reading field docstrings (``shoal serve``) needs no typer

    args = [a for a in typing.get_args(kind) if a is not type(None)]
    base = flag.type or (args[0] if type(None) in typing.get_args(kind) else kind)
    option = "--" + name.replace("_", "-")
    if base is bool:
        option += f"/--no-{option[2:]}"
    annotation = Optional[base] if default is None else base  # noqa: UP045 (typer reads it)
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(default, option, *flag.aliases, help=help.replace("``", "`")),
        annotation=annotation,
    )


def _build(cls: type, options: list[_Option], values: dict[str, Any]) -> Any:
    """The config from the command's values; pops the generated options from ``values``."""
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for o in options:
        value = values.pop(o.field)
        if o.parse is not None and value is not None:
            value = o.parse(value)
        (sections.setdefault(o.section, {}) if o.section else top)[o.field] = value
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, given in sections.items():
        top[name] = dataclasses.replace(_default(fields[name]), **given)
    return cls(**top)
