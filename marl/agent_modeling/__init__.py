"""Agent modelling: an ego agent's learned representation of the other agents' behaviour,
built from its own observations of them and fed to its policy.

``AGENT_MODELS`` maps a config name to a module class; ``make_agent_model`` builds one from the
``agent_modeling`` config section ({"name": ..., plus the constructor's keyword args})."""

from __future__ import annotations

import inspect

from torch import nn

from marl.agent_modeling.augment import two_views
from marl.agent_modeling.clam import CLAM
from marl.agent_modeling.encoder import CLAMEncoder, ProjectionHead
from marl.agent_modeling.loss import nt_xent

AGENT_MODELS: dict[str, type[nn.Module]] = {"clam": CLAM}


def make_agent_model(cfg: dict, feat_dim: int) -> nn.Module:
    """cfg = {"name": registered name, **keyword args of that model's constructor}."""
    kwargs = dict(cfg)
    name = kwargs.pop("name", None)
    if name not in AGENT_MODELS:
        raise ValueError(
            f"agent_modeling.name: {name!r} is not registered; expected one of {sorted(AGENT_MODELS)}"
        )
    cls = AGENT_MODELS[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "feat_dim")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"agent_modeling: unknown key(s) {unknown} for {name!r}; expected some of {accepted}"
        )
    return cls(feat_dim, **kwargs)


__all__ = [
    "AGENT_MODELS", "CLAM", "CLAMEncoder", "ProjectionHead", "make_agent_model", "nt_xent",
    "two_views",
]
