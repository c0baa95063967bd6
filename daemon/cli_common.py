"""What every command shares: loading the config, running a coroutine, exit codes, durations.
See docs/commands.md."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn

import click

from daemon.config import Config, config_path, load_config, parse_duration
from daemon.logs import configure_logging
from reconcile.errors import ConfigError, ReconcileError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class DurationType(click.ParamType):  # type: ignore[type-arg]
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = DurationType()


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"toogo-reconcile: {message}", err=True)
    sys.exit(code)


def load(
    ctx: click.Context, *, logs_to_stderr: bool = False, log_processors: Sequence[Any] = ()
) -> Config:
    obj = ctx.ensure_object(dict)
    if "config" not in obj:
        try:
            cfg = load_config(
                config_path(obj.get("config_path")), required=obj.get("config_path") is not None
            )
        except ConfigError as exc:
            fail(f"config error: {exc}", EXIT_USAGE)
        fmt = obj.get("log_format") or cfg.logging.format
        configure_logging(fmt, cfg.logging.level, stderr=logs_to_stderr, extra=log_processors)
        obj["config"] = cfg
    config: Config = obj["config"]
    return config


def run(job: Callable[[], Coroutine[Any, Any, int]]) -> None:
    """Run a command's coroutine; translate the project's errors into exit codes and one line."""
    try:
        code: int = asyncio.run(job())
    except ConfigError as exc:
        fail(f"config error: {exc}", EXIT_USAGE)
    except ReconcileError as exc:
        fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    sys.exit(code)
