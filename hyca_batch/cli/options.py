"""Command-line options derived from the config dataclasses, so that no default, type or help is restated.

A config field becomes ``--its-name`` (its ``name`` metadata, else the field's name, with dashes; ``flag``
metadata where the spelling differs), typed by its annotation, defaulting to its default, with its help. A
command declares what it takes of each config with ``config_options`` and receives every value by option name,
the names ``JobConfig.from_options`` and ``config_from_options`` read.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import typer

from hyca_batch.config import option_name


@dataclass(frozen=True)
class Opt:
    """One derived option: its name (the keyword the command receives), type, default and typer settings."""

    name: str
    annotation: Any
    default: Any
    flag: str
    help: str
    limits: dict[str, float]

    def parameter(self) -> inspect.Parameter:
        flag = f"--{self.flag}/--no-{self.flag}" if self.annotation is bool else f"--{self.flag}"
        info = typer.Option(self.default, flag, help=self.help, **self.limits)
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=self.annotation)


def config_options(
    cls: type,
    *,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    optional: bool = False,
    help_suffix: str = "",
    flags: dict[str, str] | None = None,
) -> list[Opt]:
    """The options of ``cls``'s fields (all of them, or ``only`` these option names, less ``skip``).

    ``optional``: every option defaults to None ("not set", e.g. generation settings that fall back to the
    model's); ``flags`` respells an option's flag for one command.
    """
    hints = typing.get_type_hints(cls)
    wanted = None if only is None else set(only)
    skipped = set(skip)
    options = []
    for f in dataclasses.fields(cls):
        name = option_name(f)
        if "help" not in f.metadata or name in skipped or (wanted is not None and name not in wanted):
            continue
        annotation = hints[f.name]
        default = f.default
        if optional:
            annotation, default = annotation | None, None
        flag = (flags or {}).get(name) or f.metadata.get("flag") or name
        limits = {k: f.metadata[k] for k in ("min", "max") if f.metadata.get(k) is not None}
        options.append(Opt(name, annotation, default, flag.replace("_", "-"), f.metadata["help"] + help_suffix, limits))
    return options


def with_options(*groups: list[Opt]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command the derived options of ``groups`` after its own parameters; it takes them as ``**options``."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn, eval_str=True)
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in signature.parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        derived = [opt.parameter() for group in groups for opt in group]

        @functools.wraps(fn)
        def command(**values: Any) -> Any:
            return fn(**values)

        parameters = own + derived
        command.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in parameters}
        return command

    return decorate


def help_of(cls: type, field_name: str) -> str:
    """A field's help, for the few options a command declares itself (its arguments, short flags)."""
    return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == field_name)
