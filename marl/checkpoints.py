"""Reading and writing checkpoints: the one place train, resume, evaluate, frozen teams and
attacks go through.

RLlib 2.60 writes every part of a checkpoint as a pickle, module weights included
(``module_state.pkl``), and unpickling runs code. A checkpoint may come from someone else's
run (a victim, an opponent), so the project writes each team module a second time in a safe
form, and loads other people's checkpoints from that form alone (DESIGN.md, "Adversaries":
victim checkpoints are untrusted input)::

    checkpoints/iter_000010/
        config.yaml              the run's resolved config (YAML)
        teams/teams.json         format, version, and per team: module class (a name from
                                 MODULE_CLASSES), model_config, observation and action spaces,
                                 weights file and its SHA-256
        teams/<team>.safetensors the module's full state_dict (weights and buffers, e.g. the
                                 value-normalisation statistics)
        run_state.json, rng_state.json, learner_group/, env_runner/ ...   (resume; RLlib)

Loading reads YAML, JSON and safetensors only. The checkpoint names classes and installed
code (``env.import``, a scripted team's ``module:callable``) but never carries code: a module
class is looked up in MODULE_CLASSES, never imported from a path found in the file.
``Algorithm.from_checkpoint`` stays available for a user's own checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.rl_module.rl_module import RLModule

from marl.config import Config, config_from_file
from marl.errors import ConfigError, UserError
from marl.modules.joint_policy import JointPolicyModule
from marl.modules.scripted import ScriptedTeamModule

CHECKPOINT_PREFIX = "iter_"
TEAMS_DIR = "teams"
TEAMS_FILE = "teams.json"
FORMAT = "marl-robust/team-weights"
FORMAT_VERSION = 1
# The module classes a checkpoint may name. A name outside this registry is refused.
MODULE_CLASSES: dict[str, type[RLModule]] = {
    "JointPolicyModule": JointPolicyModule,
    "ScriptedTeamModule": ScriptedTeamModule,
}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_DTYPES = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"}


# ------------------------------------------------------------------- finding checkpoints
def checkpoints(run_dir: Path) -> list[Path]:
    """A run's checkpoints, oldest first (temporary ``.tmp-*`` directories excluded)."""
    found = [
        p for p in (run_dir / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*")
        if p.is_dir() and p.name[len(CHECKPOINT_PREFIX):].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def _is_checkpoint(path: Path) -> bool:
    return (path / TEAMS_DIR).is_dir() or (path / "learner_group").is_dir()


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint directory, or a run directory's latest checkpoint; else a UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint '{path}' does not exist")
    if path.is_dir() and _is_checkpoint(path):
        return path
    ckpt = latest_checkpoint(path) if path.is_dir() else None
    if ckpt is None:
        raise UserError(
            f"'{path}' is neither a checkpoint (a directory with {TEAMS_DIR}/{TEAMS_FILE}) "
            "nor a run directory with checkpoints under checkpoints/"
        )
    return ckpt


# ------------------------------------------------------------------------ spaces as JSON
def _number(v: float | int) -> float | int | str:
    return v if np.isfinite(v) else str(v)  # strict JSON has no Infinity: "inf", "-inf"


def _array(x: Any, dtype: np.dtype) -> Any:
    a = np.asarray(x, dtype=dtype)
    if a.size and np.all(a == a.flat[0]):  # uniform bounds: one number
        return _number(a.flat[0].item())
    return np.vectorize(_number, otypes=[object])(a).tolist()


def space_to_json(space: gym.Space) -> dict[str, Any]:
    for cls, (encode, _) in SPACE_CODECS.items():
        if type(space) is cls:
            return {"type": cls.__name__, **encode(space)}
    raise TypeError(f"cannot describe a {type(space).__name__} space in a checkpoint")


def space_from_json(data: Any) -> gym.Space:
    if not isinstance(data, dict) or data.get("type") not in _SPACE_BY_NAME:
        raise ValueError(f"expected a space ({', '.join(_SPACE_BY_NAME)}), got {str(data)[:80]}")
    return SPACE_CODECS[_SPACE_BY_NAME[data["type"]]][1](data)


def _dtype(name: Any) -> np.dtype:
    if name not in _DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {sorted(_DTYPES)}")
    return np.dtype(name)


def _box_from(d: dict[str, Any]) -> gym.Space:
    dtype, shape = _dtype(d["dtype"]), tuple(int(s) for s in d["shape"])
    low = np.broadcast_to(np.asarray(d["low"], dtype=np.float64), shape)
    high = np.broadcast_to(np.asarray(d["high"], dtype=np.float64), shape)
    return gym.spaces.Box(low.astype(dtype), high.astype(dtype), shape=shape, dtype=dtype)


def _multi_discrete_from(d: dict[str, Any]) -> gym.Space:
    dtype = _dtype(d["dtype"])
    return gym.spaces.MultiDiscrete(np.asarray(d["nvec"], dtype=dtype), dtype=dtype,
                                    start=np.asarray(d["start"], dtype=dtype))


SPACE_CODECS: dict[type, tuple[Any, Any]] = {
    gym.spaces.Box: (
        lambda s: {"shape": list(s.shape), "dtype": s.dtype.name,
                   "low": _array(s.low, s.dtype), "high": _array(s.high, s.dtype)},
        _box_from,
    ),
    gym.spaces.MultiDiscrete: (
        lambda s: {"nvec": s.nvec.tolist(), "dtype": s.dtype.name, "start": s.start.tolist()},
        _multi_discrete_from,
    ),
    gym.spaces.Discrete: (
        lambda s: {"n": int(s.n), "start": int(s.start)},
        lambda d: gym.spaces.Discrete(int(d["n"]), start=int(d["start"])),
    ),
    gym.spaces.Dict: (
        lambda s: {"spaces": {k: space_to_json(v) for k, v in s.spaces.items()}},
        lambda d: gym.spaces.Dict({str(k): space_from_json(v) for k, v in d["spaces"].items()}),
    ),
}
_SPACE_BY_NAME = {cls.__name__: cls for cls in SPACE_CODECS}


def space_signature(space: gym.Space) -> Any:
    """What a module's layers depend on: shapes and action counts (bounds may differ)."""
    if isinstance(space, gym.spaces.Dict):
        return {k: space_signature(v) for k, v in space.spaces.items()}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {"nvec": space.nvec.tolist()}
    if isinstance(space, gym.spaces.Discrete):
        return {"n": int(space.n)}
    return {"shape": list(space.shape)}


# ------------------------------------------------------------------------------ writing
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _weights_file(team: str, index: int) -> str:
    return f"{team}.safetensors" if _SAFE_NAME.match(team) else f"team_{index}.safetensors"


def _learner_state_dicts(algo) -> dict[str, dict[str, torch.Tensor]]:
    """Each module's state_dict as the (first) Learner holds it, as torch tensors: RLlib's
    ``get_weights`` goes through NumPy and turns 0-d float32 buffers into float64 scalars."""

    def read(learner) -> dict[str, dict[str, torch.Tensor]]:
        return {
            mid: {k: v.detach().cpu().clone() for k, v in learner.module[mid].state_dict().items()}
            for mid in learner.module.keys()
        }

    return next(iter(algo.learner_group.foreach_learner(read))).get()


def save_team_weights(algo, ckpt_dir: Path) -> None:
    """Write every team module of ``algo`` under ``ckpt_dir/teams/``: its full state_dict as
    safetensors, and the description needed to rebuild it without pickle. The learner's copy
    is the authoritative one (EnvRunners hold inference copies of it)."""
    from safetensors.torch import save_file

    ckpt_dir = Path(ckpt_dir)
    tmp = ckpt_dir / f".tmp-{TEAMS_DIR}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = _learner_state_dicts(algo)
    teams: dict[str, Any] = {}
    for index, team in enumerate(sorted(weights)):
        module = algo.get_module(team)  # an EnvRunner's copy: same class, config and spaces
        name = next((n for n, cls in MODULE_CLASSES.items() if type(module) is cls), None)
        if name is None:
            raise TypeError(f"module '{team}' is a {type(module).__name__}, not in MODULE_CLASSES")
        tensors = {k: v.contiguous() for k, v in weights[team].items()}
        file = _weights_file(team, index)
        save_file(tensors, str(tmp / file), metadata={"format": FORMAT, "team": team})
        teams[team] = {
            "module_class": name,
            "model_config": json.loads(json.dumps(dict(module.model_config or {}))),
            "observation_space": space_to_json(module.observation_space),
            "action_space": space_to_json(module.action_space),
            "weights": file,
            "sha256": _sha256(tmp / file),
        }
    text = json.dumps({"format": FORMAT, "version": FORMAT_VERSION, "teams": teams}, indent=1, allow_nan=False)
    (tmp / TEAMS_FILE).write_text(text)
    final = ckpt_dir / TEAMS_DIR
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def has_team_weights(ckpt: Path) -> bool:
    return (Path(ckpt) / TEAMS_DIR / TEAMS_FILE).is_file()


# ------------------------------------------------------------------------------ reading
@dataclass
class TeamCheckpoint:
    """A checkpoint loaded safely: its config and each team's module, in eval mode."""

    ckpt: Path
    cfg: Config
    modules: dict[str, RLModule]
    observation_spaces: dict[str, gym.Space]
    action_spaces: dict[str, gym.Space]

    @property
    def teams_file(self) -> Path:
        return self.ckpt / TEAMS_DIR / TEAMS_FILE


def _read_description(ckpt: Path) -> dict[str, Any]:
    path = ckpt / TEAMS_DIR / TEAMS_FILE
    if not path.is_file():
        raise UserError(
            f"checkpoint '{ckpt}' lacks safe team weights ({TEAMS_DIR}/{TEAMS_FILE}); it was written "
            "before they existed, and its RLlib pickles are not loaded from an untrusted source. "
            "If it is your own run, resume it once (`run.py resume RUN_DIR`): that adds them"
        )
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"'{path}' is not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise UserError(f"'{path}' has format {got!r}; expected '{FORMAT}'")
    if data.get("version") != FORMAT_VERSION:
        raise UserError(f"'{path}' has format version {data.get('version')!r}; expected {FORMAT_VERSION}")
    teams = data.get("teams")
    if not isinstance(teams, dict) or not teams:
        raise UserError(f"'{path}' describes no team (expected a non-empty 'teams' mapping)")
    return teams


def _build_module(path: Path, team: str, desc: Any) -> tuple[RLModule, gym.Space, gym.Space]:
    where = f"'{path}', team '{team}'"
    if not isinstance(desc, dict):
        raise UserError(f"{where}: expected a mapping, got {type(desc).__name__}")
    cls = MODULE_CLASSES.get(desc.get("module_class"))
    if cls is None:
        raise UserError(
            f"{where}: module_class {desc.get('module_class')!r} is not one of {sorted(MODULE_CLASSES)}"
        )
    try:
        obs_space = space_from_json(desc["observation_space"])
        act_space = space_from_json(desc["action_space"])
        model_config = desc["model_config"]
        if not isinstance(model_config, dict):
            raise ValueError("model_config must be a mapping")
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{where}: cannot read the module description ({type(e).__name__}: {e})") from None
    try:
        module = cls(observation_space=obs_space, action_space=act_space, model_config=model_config)
    except Exception as e:  # a description that the class rejects is bad input, not a crash
        raise UserError(f"{where}: cannot rebuild {cls.__name__} from it ({type(e).__name__}: {e})") from None
    return module, obs_space, act_space


def _load_weights(ckpt: Path, team: str, desc: dict[str, Any], module: RLModule) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = desc.get("weights")
    if not isinstance(file, str) or not _SAFE_NAME.match(file) or not file.endswith(".safetensors"):
        raise UserError(f"'{ckpt / TEAMS_DIR / TEAMS_FILE}', team '{team}': weights {file!r} is not a plain '*.safetensors' file name")
    path = ckpt / TEAMS_DIR / file
    if not path.is_file():
        raise UserError(f"weights file '{path}' of team '{team}' is missing")
    if desc.get("sha256") != _sha256(path):
        raise UserError(f"weights file '{path}' does not match the SHA-256 recorded in {TEAMS_FILE} (truncated or altered)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"weights file '{path}' is not a readable safetensors file ({e})") from None
    expected = {k: v for k, v in module.state_dict().items()}
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise UserError(
            f"weights file '{path}' does not fit {type(module).__name__} of team '{team}': "
            f"missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for key, value in tensors.items():
        want = expected[key]
        if want.dim() == 0 and value.dtype == torch.float64 and tuple(value.shape) == (1,) and want.is_floating_point():
            # Written from RLlib's get_weights() (before 89938c2): a 0-d float buffer as float64 (1,).
            value = tensors[key] = value.reshape(()).to(want.dtype)
        if value.shape != want.shape or value.dtype != want.dtype:
            raise UserError(
                f"weights file '{path}': '{key}' is {value.dtype} {tuple(value.shape)}; "
                f"team '{team}' expects {want.dtype} {tuple(want.shape)}"
            )
    module.load_state_dict(tensors, strict=True)


def load_checkpoint(path: Path) -> TeamCheckpoint:
    """Load a checkpoint (or a run directory's latest) from YAML, JSON and safetensors alone.

    Never unpickles. Missing, truncated or foreign files raise a UserError naming the file."""
    ckpt = resolve_checkpoint(Path(path))
    config_file = ckpt / "config.yaml"
    if not config_file.is_file():
        raise UserError(f"checkpoint '{ckpt}' lacks config.yaml (the run's resolved config)")
    cfg = config_from_file(config_file)
    modules, obs_spaces, act_spaces = _load_all(ckpt)
    return TeamCheckpoint(ckpt, cfg, modules, obs_spaces, act_spaces)


def _load_all(ckpt: Path) -> tuple[dict[str, RLModule], dict[str, gym.Space], dict[str, gym.Space]]:
    teams = _read_description(ckpt)
    modules, obs_spaces, act_spaces = {}, {}, {}
    for team, desc in teams.items():
        module, obs_space, act_space = _build_module(ckpt / TEAMS_DIR / TEAMS_FILE, str(team), desc)
        _load_weights(ckpt, team, desc, module)
        module.eval()
        modules[team], obs_spaces[team], act_spaces[team] = module, obs_space, act_space
    return modules, obs_spaces, act_spaces


def load_modules(path: Path) -> dict[str, RLModule]:
    """Every module of a checkpoint of any kind (a team run's, an attack run's attacker), from
    its safe weights alone, in eval mode; no config is read. Never unpickles."""
    return _load_all(resolve_checkpoint(Path(path)))[0]


def check_team_fits(ckpt: TeamCheckpoint, team: str, env, env_team: str | None = None) -> None:
    """Module ``team`` of the checkpoint must play ``env_team`` (default: the same name) of
    ``env``: the same observation, state and action shapes and action counts."""
    env_team = env_team or team
    if team not in ckpt.modules:
        raise ConfigError(f"'{ckpt.teams_file}' has no module '{team}' (modules: {', '.join(ckpt.modules)})")
    if env_team not in env.observation_spaces:
        raise ConfigError(f"'{ckpt.teams_file}': the env has no team '{env_team}' (teams: {', '.join(env.observation_spaces)})")
    have = (space_signature(ckpt.observation_spaces[team]), space_signature(ckpt.action_spaces[team]))
    want = (space_signature(env.observation_spaces[env_team]), space_signature(env.action_spaces[env_team]))
    if have != want:
        raise ConfigError(
            f"'{ckpt.teams_file}': module '{team}' was trained for observations {have[0]} and "
            f"actions {have[1]}, but team '{env_team}' of this env has {want[0]} and {want[1]}"
        )


# ------------------------------------------------------------------------ frozen teams
def frozen_source(team: str, role) -> tuple[TeamCheckpoint, str]:
    """The checkpoint of a frozen team and the module in it that plays the team: ``role.module``,
    else the one named like the team, else the checkpoint's only one. ConfigError otherwise."""
    key = f"config key 'teams.{team}"
    path = Path(role.checkpoint)
    if not path.exists():
        raise ConfigError(f"{key}.checkpoint': '{path}' does not exist or holds no checkpoint")
    try:
        source = load_checkpoint(path)
    except UserError as e:
        raise ConfigError(f"{key}.checkpoint': {e}") from None
    names = sorted(source.modules)
    name = role.module or (team if team in names else names[0] if len(names) == 1 else None)
    if name is None or name not in names:
        raise ConfigError(f"{key}.module': checkpoint '{source.ckpt}' has modules {names}; name one of them")
    return source, name


def load_frozen_teams(sources: dict[str, tuple[str, str]], algorithm=None, **kwargs) -> None:
    """RLlib ``on_algorithm_init`` callback: set each frozen team's weights, read from its
    safe checkpoint, in the Learner and in every EnvRunner (local and remote, blocking)."""
    from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_LEARNER_GROUP, COMPONENT_RL_MODULE

    states = {}
    for team, (path, name) in sources.items():
        module = load_checkpoint(Path(path)).modules[name]
        states[team] = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
    if not states:
        return
    # Learner and local EnvRunners (set in place).
    algorithm.set_state({COMPONENT_LEARNER_GROUP: {COMPONENT_LEARNER: {COMPONENT_RL_MODULE: states}}})
    # Remote EnvRunners: RLlib's sync inside set_state is fire-and-forget and is silently
    # dropped while an EnvRunner still applies setup's fresh weights (one request in flight per
    # EnvRunner), and PPO's syncs after training cover the trained modules only, so a frozen
    # team would play with random weights all run. Push its weights and wait for every one.
    for group in (algorithm.env_runner_group, algorithm.eval_env_runner_group):
        if group is not None and group.num_remote_workers():
            group.foreach_env_runner("set_state", kwargs={"state": {COMPONENT_RL_MODULE: states}},
                                     local_env_runner=False, timeout_seconds=None)
