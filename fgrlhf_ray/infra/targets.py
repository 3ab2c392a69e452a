"""`module:function` strings (function scorers, annotators, judges) resolved to objects."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from fgrlhf_ray.errors import ConfigError


def import_target(target: str) -> Callable:
    """Resolve ``"package.module:attr.sub"`` to the object it names (ConfigError if not)."""
    if not isinstance(target, str) or target.count(":") != 1:
        raise ConfigError(f"function target {target!r} must look like 'package.module:function'")
    mod_name, attr = target.split(":")
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ConfigError(f"function target {target!r}: cannot import module {mod_name!r} ({exc})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"function target {target!r}: {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"function target {target!r} is not callable")
    return obj
