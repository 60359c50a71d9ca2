"""What every command shares: the settings (environment plus global flags) and option types."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from indexer.settings import Settings

log = logging.getLogger(__name__)

#: Global flags given on the command line (`--home`, `--model`...), over the environment.
overrides: dict[str, Any] = {}

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
KOption = Annotated[int, typer.Option("-k", "--top", min=1, max=10000, help="Number of results.")]


def settings(**extra: Any) -> Settings:
    """Settings from the environment, with command-line flags on top."""
    from pydantic import ValidationError

    from indexer.errors import InvalidInput
    from indexer.settings import Settings

    try:
        return Settings(**{**overrides, **extra})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        raise InvalidInput(f"invalid setting {where}: {err['msg']}") from None
