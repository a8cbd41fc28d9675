"""Adversary plugins by name. Built-in plugins register with ``@register``; third-party ones
are found through the entry-point group ``marl_robust.adversaries`` (in the package's
pyproject: ``[project.entry-points."marl_robust.adversaries"] name = "pkg.module:PluginClass"``).
"""

from __future__ import annotations

import importlib
import importlib.util
from importlib.metadata import entry_points

from adversaries.base import AdversaryPlugin
from marl.errors import UserError

ENTRY_POINT_GROUP = "marl_robust.adversaries"
# Modules whose import registers the built-in plugins (adversaries.ami where present).
BUILTIN_MODULES = (
    "adversaries.random_agent", "adversaries.gleave", "adversaries.obs_pgd", "adversaries.gap", "adversaries.ami",
)

REGISTRY: dict[str, type[AdversaryPlugin]] = {}
_loaded = False


def register(cls: type[AdversaryPlugin]) -> type[AdversaryPlugin]:
    """Class decorator: make ``cls`` available as ``adversary.name: <cls.name>``."""
    cls.check()
    other = REGISTRY.get(cls.name)
    if other is not None and other is not cls:
        raise ValueError(f"adversary '{cls.name}' is registered twice ({other.__module__}, {cls.__module__})")
    REGISTRY[cls.name] = cls
    return cls


def load_plugins() -> dict[str, type[AdversaryPlugin]]:
    """Import the built-in plugins and the installed third-party ones (once)."""
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_MODULES:
            if importlib.util.find_spec(module) is not None:
                importlib.import_module(module)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, AdversaryPlugin)):
                raise UserError(f"entry point '{ep.name}' of {ENTRY_POINT_GROUP} is not an AdversaryPlugin")
            register(cls)
    return REGISTRY


def get_plugin(name: str) -> type[AdversaryPlugin]:
    plugins = load_plugins()
    if name not in plugins:
        raise UserError(f"unknown adversary '{name}'; registered: {', '.join(sorted(plugins))}")
    return plugins[name]
