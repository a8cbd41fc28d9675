"""Training-time defenses by name: the hook through which ``run.py train`` trains a team
against something (``defense.name`` in the config; ``defense: null`` = plain training).

marl knows no specific defense. A defense is a ``Defense`` subclass registered with
``@register``. Every defense, the built-in ones of ``adversaries.defenses`` included, is
found through the entry-point group ``marl_robust.defenses`` (this project's pyproject.toml
declares its own), so marl never imports the adversaries package by name
(``[project.entry-points."marl_robust.defenses"] name = "pkg.module:DefenseClass"``).

A defense decides three things, all inside the one RLlib Algorithm that ``marl.algorithms``
assembles (no outer loop):

- ``check``: its settings against the env and the teams, before anything is created;
- ``build``: the algorithm config, from the parts plain team training would use (env class,
  env config, module specs, policies, learner config), typically by wrapping the env and
  adding modules, then calling ``marl.algorithms.build_ppo``;
- ``record``: its metrics, added to each metrics.jsonl row.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar

import pydantic

from marl.errors import ConfigError

if TYPE_CHECKING:
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig

ENTRY_POINT_GROUP = "marl_robust.defenses"


class DefenseParams(pydantic.BaseModel):
    """The keys every defense has; a defense's ``Params`` subclasses this."""

    model_config = pydantic.ConfigDict(extra="forbid")

    name: str
    budget: float = pydantic.Field(gt=0.0, le=1.0)  # the defense budget ε_d, in (0, 1]


class Defense:
    """Subclass per defense, set ``name`` and ``Params``, and ``@register`` it."""

    name: ClassVar[str]
    Params: ClassVar[type[DefenseParams]] = DefenseParams

    def __init__(self, params: DefenseParams):
        self.params = params

    def check(self, cfg: Any, env: Any) -> None:
        """Raise ConfigError (naming the ``defense.*`` key) where the settings do not fit the
        env (an ``envs.adapter.TeamEnv``) or the config's teams."""

    def build(self, cfg: Any, parts: dict[str, Any]) -> AlgorithmConfig:
        """The RLlib algorithm config; ``parts`` are ``marl.algorithms.build_ppo``'s keyword
        arguments for plain training of ``cfg``."""
        raise NotImplementedError

    def record(self, result: dict[str, Any], row: dict[str, Any]) -> None:
        """Add this defense's metrics to (or correct) a metrics row, from RLlib's result."""


REGISTRY: dict[str, type[Defense]] = {}
_loaded = False


def register(cls: type[Defense]) -> type[Defense]:
    """Class decorator: make ``cls`` available as ``defense.name: <cls.name>``."""
    other = REGISTRY.get(cls.name)
    if other is not None and other is not cls:
        raise ValueError(f"defense '{cls.name}' is registered twice ({other.__module__}, {cls.__module__})")
    REGISTRY[cls.name] = cls
    return cls


def load_defenses() -> dict[str, type[Defense]]:
    """The installed defenses, from the entry-point group (loaded once)."""
    global _loaded
    if not _loaded:
        _loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                cls = ep.load()
            except Exception as e:  # noqa: BLE001 - a broken third-party package: one error line
                raise ConfigError(f"entry point '{ep.name}' of {ENTRY_POINT_GROUP} failed to load: {e}") from None
            if not (isinstance(cls, type) and issubclass(cls, Defense)):
                raise ConfigError(f"entry point '{ep.name}' of {ENTRY_POINT_GROUP} is not a Defense")
            register(cls)
    return REGISTRY


def validate_defense(data: Any) -> dict[str, Any] | None:
    """The config's ``defense`` section, checked against its defense's schema and completed
    with its defaults (as config.yaml records it); None stays None."""
    if data is None:
        return None
    defenses = load_defenses()
    registered = ", ".join(sorted(defenses)) or "none"
    if not isinstance(data, dict):
        raise ConfigError(f"config key 'defense' must be null or a mapping with 'name' (registered defenses: {registered})")
    name = data.get("name")
    if not isinstance(name, str) or name not in defenses:
        what = "is missing" if name is None else f"'{name}' is not a registered defense"
        raise ConfigError(f"config key 'defense.name' {what}; registered: {registered}")
    cls = defenses[name]
    try:
        params = cls.Params.model_validate(data)
    except pydantic.ValidationError as e:
        from marl.config import format_error

        err = e.errors()[0]
        err = {**err, "loc": ("defense", *err["loc"])}
        raise ConfigError(format_error(err, _Wrap(cls.Params))) from None
    return params.model_dump(mode="json")


def _Wrap(params: type[pydantic.BaseModel]) -> type[pydantic.BaseModel]:
    """A one-field schema {defense: params}, so that 'did you mean' hints name defense keys."""
    return pydantic.create_model("DefenseSection", defense=(params, ...))


def defense_for(cfg: Any) -> Defense | None:
    """The defense of a validated config (None for ``defense: null`` or a config without one)."""
    data = getattr(cfg, "defense", None)
    if data is None:
        return None
    cls = load_defenses()[data["name"]]
    return cls(cls.Params.model_validate(data))
