"""Launch flags made from the backends' declared options (affvx.cluster.base.BackendOption).

Every option that a backend declares with a `flag` becomes an option of the command (one per
flag, shared by the backends that declare it); the command receives the ones given as
`backend_flags` ({"--partition": "gpu"}) and the orchestrator checks them against the chosen
backend, so a flag that backend does not take is refused in one line.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import typer

from affvx.cluster.base import BackendOption
from affvx.cluster.registry import backend_names, backend_options


def declared_flags() -> dict[str, tuple[BackendOption, list[str]]]:
    """Each declared flag with its option and the backends that take it."""
    flags: dict[str, tuple[BackendOption, list[str]]] = {}
    for name in backend_names():
        for option in backend_options(name):
            if option.flag:
                flags.setdefault(option.flag, (option, []))[1].append(name)
    return flags


def with_backend_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    """`command` with a Typer option for every declared backend flag; it must take
    `backend_flags` (the given ones, by flag)."""
    parameters = {}
    for flag, (option, backends) in declared_flags().items():
        name = flag.lstrip("-").replace("-", "_")
        annotation = list[str] if option.kind is list else option.kind
        help_text = f"{option.help[0].upper()}{option.help[1:]} ({', '.join(backends)})."
        parameters[name] = (
            flag,
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(None, flag, help=help_text),
                annotation=annotation,
            ),
        )

    @functools.wraps(command)
    def wrapper(**values: Any) -> Any:
        given = {flag: values.pop(name) for name, (flag, _) in parameters.items()}
        given = {flag: value for flag, value in given.items() if value not in (None, [])}
        return command(**values, backend_flags=given)

    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "backend_flags"]
    extra = [parameter for _, parameter in parameters.values()]
    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + extra
    )
    wrapper.__annotations__ = {p.name: p.annotation for p in own + extra}
    return wrapper
