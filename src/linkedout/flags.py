"""Config dataclass fields that are also command-line flags: each setting is declared once.

A field of `ModelConfig` / `TrainConfig` declared with `flag_field` carries its flag and help text in
its metadata; `with_config_options` turns those fields into typer options on a command, so a new
hyperparameter is one line in its dataclass, not three (field, CLI option, pass-through)::

    lr: float = flag_field(1e-3, "--lr", "AdamW learning rate.")    # the declaration
    linkedout train --lr 0.01  ->  settings["lr"] = 0.01  ->  recipe(model, protocol, **settings)

Every generated option defaults to None: unset means "the recipe for (model, protocol) decides", so the
field's own default is not what applies; ``show_default`` marks the few fields no recipe sets.

Torch-free on purpose: the config modules import it, and the CLI must stay cheap to import.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable
from dataclasses import Field, field, fields
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

__all__ = ["config_flags", "config_parameters", "flag_field", "with_config_options"]

T = TypeVar("T")

# metadata keys (this module is their only reader and writer)
_FLAG, _HELP, _SHOW_DEFAULT = "cli", "help", "cli_show_default"


def flag_field(default: T, flag: str, help: str | None = None, *, show_default: bool = False) -> T:
    """A dataclass field with ``default`` that the CLI offers as ``flag`` (``"--x"``, or ``"--x/--no-x"``
    for a boolean). ``show_default``: the option defaults to (and ``--help`` shows) the field's default
    instead of None; only for fields no recipe sets, where that default is what an unset flag means."""
    metadata = {_FLAG: flag, _HELP: help, _SHOW_DEFAULT: show_default}
    return field(default=default, metadata=metadata)  # type: ignore[return-value]


def config_flags(config: type) -> list[tuple[Field[Any], str]]:
    """``(field, flag)`` for each field of the dataclass ``config`` that is offered on the command line."""
    return [(f, f.metadata[_FLAG]) for f in fields(config) if f.metadata.get(_FLAG)]


def _optional(hint: Any) -> Any:
    # `int | None` and `int` both become `int | None`: None is how an option says "not given"
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"a flag field needs one type besides None, got {hint}")
        hint = args[0]
    return hint | None


def config_parameters(*configs: type) -> list[inspect.Parameter]:
    """Keyword-only parameters, one per flagged field of ``configs``, whose defaults are typer options."""
    import typer

    params = []
    for config in configs:
        hints = get_type_hints(config)  # the config modules use postponed (string) annotations
        for f, flag in config_flags(config):
            # None = unset, the recipe decides; a show_default field (no recipe sets it) keeps the
            # field's default, which --help then shows as it always did
            default = f.default if f.metadata.get(_SHOW_DEFAULT) else None
            option = typer.Option(default, flag, help=f.metadata.get(_HELP), show_default=default is not None)
            annotation = _optional(hints[f.name])
            params.append(
                inspect.Parameter(
                    f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation
                )
            )
    return params


def with_config_options(func: Callable[..., T], *configs: type, after: str) -> Callable[..., T]:
    """``func`` (which takes the config fields through ``**settings``) wrapped with a signature holding
    one typer option per flagged field of ``configs``, placed after its parameter ``after``.

    typer builds a command from ``inspect.signature``, which honours ``__signature__``, and calls it
    with every parameter as a keyword, so the generated values arrive in ``settings`` (None = unset).
    ``func`` itself is left as it is (callable directly, wrappable again). A field whose name clashes
    with another parameter raises ValueError here, not at parse time."""
    own = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for p in inspect.signature(func, eval_str=True).parameters.values()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    names = [p.name for p in own]
    if after not in names:
        raise ValueError(f"{getattr(func, '__name__', func)} has no parameter {after!r}")
    at = names.index(after) + 1
    signature = inspect.Signature([*own[:at], *config_parameters(*configs), *own[at:]])

    @functools.wraps(func)  # name and docstring (the command's help); type hints resolve via __wrapped__
    def command(**kwargs: Any) -> T:
        return func(**kwargs)

    command.__signature__ = signature  # type: ignore[attr-defined]
    return command
