"""Finding the user's engine: `SAGAQ_APP=module:attribute` (or `--app`), one loader for the
`sagaq` command and the HTTP API, so both know the sagas the workers run. There is no
default: an installed library cannot guess the name of your module."""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING

from sagaq.errors import ConfigurationError
from sagaq.settings import Settings

if TYPE_CHECKING:
    from sagaq.client import SagaQ

HOW = "set SAGAQ_APP (or --app) to module:attribute naming your SagaQ engine, e.g. shop:engine"


def load_engine(spec: str | None = None) -> SagaQ:
    """Import `module:attribute` (also from the current directory, as `celery -A` does) and
    return the SagaQ it names; `spec` defaults to SAGAQ_APP. ConfigurationError otherwise."""
    from sagaq.client import SagaQ

    spec = spec or Settings().app
    if not spec:
        raise ConfigurationError(f"no engine to load: {HOW}")
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(f"--app must look like module:attribute, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"cannot import {module_name!r} (from --app / SAGAQ_APP): {exc}"
        ) from None
    engine = getattr(module, attr, None)
    if not isinstance(engine, SagaQ):
        raise ConfigurationError(f"{spec} is not a SagaQ engine (got {type(engine).__name__})")
    return engine
