"""Configs: YAML composed with OmegaConf, validated with pydantic, before Ray starts.

Composition, lowest priority first:

1. ``configs/base.yaml``: every default, commented (the one place defaults live);
2. files listed under ``defaults:`` in the experiment file (paths relative to it), in order;
3. the experiment file itself (it states only what differs);
4. dotted ``key=value`` overrides from the command line.

The result is checked against the schema below. Every failure becomes a ``ConfigError`` whose
message names the key or file and what was expected; the CLI prints it as one ``error:`` line.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from marl.errors import ConfigError
from marl.graphs.dag import check_acyclic

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
BASE_CONFIG = CONFIG_DIR / "base.yaml"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"

PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
# A constant, or RLlib's piecewise-linear schedule [[env_step, value], ...] starting at step 0.
Schedule = float | list[tuple[NonNegInt, float]]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, populate_by_name=True)


def _check_schedule(value: Schedule, name: str) -> Schedule:
    if isinstance(value, list):
        if not value or value[0][0] != 0:
            raise ValueError(f"a schedule for {name} must start at env step 0, e.g. [[0, 5e-4], [1000000, 1e-4]]")
        steps = [s for s, _ in value]
        if steps != sorted(steps):
            raise ValueError(f"schedule steps for {name} must increase")
    return value


class HistoryConfig(Strict):
    """The episode history a team's observation carries (envs/adapter.py); set from
    ``model.agent_modeling``."""

    length: PosInt = 50
    last_actions: bool = True


class EnvConfig(Strict):
    import_: str = Field(alias="import")
    kwargs: dict[str, Any]
    teams: dict[str, list[str]] | None = None
    history: HistoryConfig | None = None

    @field_validator("import_")
    @classmethod
    def _resolves(cls, path: str) -> str:
        from envs.adapter import resolve_env_factory

        try:
            resolve_env_factory(path)
        except ImportError as e:
            raise ValueError(
                f"cannot import '{path}' ({e}); expected a module with parallel_env() or 'module:callable'"
            ) from None
        except AttributeError as e:
            raise ValueError(f"'{path}': {e}") from None
        return path


class DensityConfig(Strict):
    """Density annealing of a learned graph (Chen & Zhang 2023, §4.3)."""

    anneal: bool
    n_d: PosInt
    tau_start: Probability
    alpha0: Annotated[float, Field(ge=0.0)]
    alpha_target: Annotated[float, Field(ge=0.0)]
    alpha_start: Probability


class GraphConfig(Strict):
    mode: Literal["empty", "full", "fixed", "learned"]
    edges: list[tuple[NonNegInt, NonNegInt]]
    order: Literal["learned", "fixed"]
    context_hidden: PosInt
    density: DensityConfig

    @model_validator(mode="after")
    def _edges_form_a_dag(self) -> GraphConfig:
        if self.mode != "fixed" and self.edges:
            raise ValueError(f"edges are only read when mode is 'fixed' (mode is '{self.mode}')")
        if self.edges:
            check_acyclic(1 + max(max(e) for e in self.edges), [tuple(e) for e in self.edges])
        return self


class AgentModelingConfig(Strict):
    """Agent modelling (marl/agent_modeling). Defaults are CLAM's (Ma et al. 2024; DESIGN.md)."""

    name: str
    repr_dim: PosInt = 20            # the representation fed to the actor (and critic)
    width: PosInt = 128              # set-attention width
    heads: PosInt = 4
    history: PosInt = 50             # steps of the episode prefix the encoder reads (latest)
    last_actions: bool = True        # others' last actions in the features, where not the env's own
    temperature: Annotated[float, Field(gt=0.0)] = 0.5   # NT-Xent
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.99   # EMA encoder used for acting
    crop_min: PosInt = 8             # temporal crops of U{crop_min..crop_max} steps
    crop_max: PosInt = 48
    mask_fraction: Probability = 0.3  # share of the first view's steps zeroed
    lr: Annotated[float, Field(gt=0.0)] = 3.0e-3   # the encoder's own Adam
    buffer_episodes: PosInt = 10000  # episode buffer the encoder trains from
    batch_episodes: PosInt = 512     # episodes per contrastive batch (fewer while the buffer fills)
    min_episodes: PosInt = 16        # no encoder update before the buffer holds this many
    encoder_every: PosInt = 4        # one encoder step per this many PPO minibatch steps (the
                                     # default batch: 5 per 2,000 env steps, every 8 episodes of 50)
    critic: bool = True              # also feed the representation to the critic
    probe_episodes: NonNegInt = 60   # linear probe of the behaviour type at each checkpoint
                                     # (envs that report types); 0 = off

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        from marl.agent_modeling import AGENT_MODELS

        if name not in AGENT_MODELS:
            raise ValueError(f"unknown agent model '{name}'; registered: {', '.join(sorted(AGENT_MODELS))}")
        return name

    @model_validator(mode="after")
    def _consistent(self) -> AgentModelingConfig:
        if not self.crop_min <= self.crop_max:
            raise ValueError(f"crop_min ({self.crop_min}) must not exceed crop_max ({self.crop_max})")
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be a multiple of heads ({self.heads})")
        if self.min_episodes > self.buffer_episodes:
            raise ValueError(
                f"min_episodes ({self.min_episodes}) must not exceed buffer_episodes ({self.buffer_episodes}): "
                "the encoder would never train"
            )
        return self


class RecurrentConfig(Strict):
    """Recurrent actor (and critic): a GRU after the MLP trunk (Yu et al. 2022, rMAPPO), one
    hidden state per agent, trained on sequences of ``max_seq_len`` steps (marl/modules)."""

    cell: Literal["gru"] = "gru"
    hidden: PosInt = 64              # the GRU's state size
    critic: bool = True              # a recurrent critic too (centralised: one state per team;
                                     # decentralized: one per agent)
    max_seq_len: PosInt = 20         # training sequences (RLlib zero-pads shorter ones)


class ModelConfig(Strict):
    hidden: PosInt
    layers: PosInt
    activation: Literal["tanh", "relu"]
    critic: Literal["centralized", "decentralized"]
    value_normalization: bool
    graph: GraphConfig
    # null = no agent modelling: the learner is exactly the one without it.
    agent_modeling: AgentModelingConfig | None = None
    # null = feed-forward actor and critic: the module and learner are exactly those without it.
    recurrent: RecurrentConfig | None = None


class AlgoConfig(Strict):
    name: Literal["mappo"]
    lr: Schedule
    gamma: Annotated[float, Field(gt=0.0, le=1.0)]
    lambda_: Probability
    clip_param: Annotated[float, Field(gt=0.0)]
    entropy_coeff: Schedule
    vf_loss_coeff: Annotated[float, Field(ge=0.0)]
    grad_clip: Annotated[float, Field(gt=0.0)] | None
    train_batch_size: PosInt
    minibatch_size: PosInt
    num_epochs: PosInt

    @field_validator("lr", "entropy_coeff")
    @classmethod
    def _schedule(cls, v, info):
        return _check_schedule(v, info.field_name)

    @model_validator(mode="after")
    def _minibatch_fits(self) -> AlgoConfig:
        if self.minibatch_size > self.train_batch_size:
            raise ValueError(
                f"minibatch_size ({self.minibatch_size}) must not exceed train_batch_size ({self.train_batch_size})"
            )
        return self


class RunnersConfig(Strict):
    # Checked against the attached Ray cluster's CPUs and GPUs once Ray has started
    # (marl/resources.py): a config that asks for more than the cluster has exits 2.
    num_env_runners: NonNegInt
    num_envs_per_env_runner: PosInt
    num_gpus_per_env_runner: Annotated[float, Field(ge=0.0)] = 0.0
    num_learners: NonNegInt = 0  # 0: one Learner in the driver process
    num_gpus_per_learner: Annotated[float, Field(ge=0.0)]
    torch_threads: PosInt
    # Fault tolerance (marl/runners.py): a sub-environment that raises is recreated and its
    # episode dropped; past these many faults in one iteration, or in the whole run, it stops.
    max_env_faults_per_iteration: NonNegInt = 5
    max_env_faults: NonNegInt = 100
    # NaN or inf from the env (envs/adapter.py): stop the run, or end that episode and count it.
    nonfinite_env_output: Literal["error", "end_episode"] = "error"
    # Step the env's natively batched form (envs/batched.py) as one call per step over all
    # num_envs_per_env_runner copies (marl/batched_runner.py); needs an env that offers one.
    batched: bool = False

    @model_validator(mode="after")
    def _gpu_runners_are_remote(self) -> RunnersConfig:
        # RLlib's EnvRunner in the driver (num_env_runners: 0) always samples on the CPU
        # (MultiAgentEnvRunner asks for a device only on remote runners, worker_index > 0).
        if self.num_gpus_per_env_runner > 0 and self.num_env_runners == 0:
            raise ValueError(
                f"num_gpus_per_env_runner: {self.num_gpus_per_env_runner:g} needs num_env_runners >= 1; "
                "with num_env_runners: 0 the envs sample in the driver, on the CPU"
            )
        return self


class TrainConfig(Strict):
    total_env_steps: PosInt
    checkpoint_every: PosInt
    progress: Literal["auto", "bar", "log"]


class TeamRole(Strict):
    """How one team of a multi-team env is played: trained, frozen or scripted."""

    role: Literal["train", "frozen", "scripted"] = "train"
    checkpoint: str | None = None  # frozen: a checkpoint or run directory (its latest)
    module: str | None = None  # frozen: the module in that checkpoint (default: its only one)
    policy: str = "random"  # scripted: random | noop | module:callable

    @model_validator(mode="after")
    def _needs(self) -> TeamRole:
        if self.role == "frozen" and not self.checkpoint:
            raise ValueError("a frozen team needs 'checkpoint' (a checkpoint or run directory)")
        if self.role == "scripted":
            from marl.modules.scripted import resolve_script

            try:
                resolve_script(self.policy)
            except ImportError as e:
                raise ValueError(f"policy '{self.policy}' cannot be imported ({e})") from None
        return self


class Config(Strict):
    name: str | None
    seed: NonNegInt
    output_dir: str
    env: EnvConfig
    teams: dict[str, TeamRole]
    model: ModelConfig
    algo: AlgoConfig
    runners: RunnersConfig
    train: TrainConfig
    # A training-time defense (marl/defenses.py): null = plain training; else a mapping with
    # `name` (a registered defense), `budget` and the defense's own keys, checked by its schema.
    defense: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _history_for_agent_modeling(self) -> Config:
        """An agent model reads the episode prefix: the env's observation carries it."""
        am = self.model.agent_modeling
        if am is not None:
            self.env.history = HistoryConfig(length=am.history, last_actions=am.last_actions)
        return self

    @model_validator(mode="after")
    def _default_name(self) -> Config:
        if not self.name:
            self.name = default_run_name(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")


def default_run_name(cfg: Config) -> str:
    """<algorithm>[-<graph mode>]-<env>[-<defense>]: mappo (empty graph), ippo (per-agent
    critics) or bn_mappo with its graph mode; the env from its import path (version suffix
    dropped) and its scenario or map where the kwargs name one; the defense's name if any."""
    graph = cfg.model.graph.mode
    if graph != "empty":
        algo = f"bn_{cfg.algo.name}-{graph}"
    else:
        algo = "ippo" if cfg.model.critic == "decentralized" else cfg.algo.name
    path = cfg.env.import_.partition(":")
    env = (path[2] or path[0].rsplit(".", 1)[-1]).removesuffix("_env")
    env = re.sub(r"_v\d+$", "", env)
    for key in ("scenario", "map_name", "agent_conf"):
        if isinstance(cfg.env.kwargs.get(key), str | int):
            env += f"_{cfg.env.kwargs[key]}"
    defense = cfg.defense.get("name") if isinstance(cfg.defense, dict) else None
    suffix = f"-{defense}" if isinstance(defense, str) else ""  # a defended run says so
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{algo}-{env}{suffix}")


# ------------------------------------------------------------------------------ loading
def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist (expected a YAML file)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file '{path}' is not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys, not {type(data).__name__}")
    return data


def _compose(path: Path, seen: tuple[Path, ...] = ()) -> list[dict[str, Any]]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config file '{path}' includes itself through 'defaults'")
    data = _read_yaml(path)
    parents = data.pop("defaults", []) or []
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f"'defaults' in '{path}' must be a list of file paths")
    layers: list[dict[str, Any]] = []
    for parent in parents:
        layers += _compose((path.parent / parent), seen + (path,))
    return layers + [data]


def _parse_overrides(overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        key, eq, _ = item.partition("=")
        if not eq or not key or key.strip() != key:
            raise ConfigError(f"override '{item}' must look like key.sub=value")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse overrides {overrides}: {str(e).splitlines()[0]}") from None


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names (by alias) at ``loc`` inside ``model``, for 'did you mean' hints."""
    for part in loc:
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return [f.alias or n for n, f in model.model_fields.items()]


# Optional packages -> the pyproject extra that installs them.
OPTIONAL_EXTRAS = {
    "jaxmarl": "smax", "jax": "smax", "gymnasium_robotics": "mujoco", "mujoco": "mujoco",
    "lbforaging": "lbf", "rware": "rware", "smacv2": "smacv2", "vmas": "vmas",
}

UNION_TAGS = {"float", "int", "str", "bool", "none"}


def _format_error(err: dict[str, Any], schema: type[BaseModel] | None = None) -> str:
    # Drop pydantic's union-member tags ('float', 'list[...]') from the location.
    loc = tuple(
        str(p) for p in err["loc"] if not (str(p) in UNION_TAGS or "[" in str(p) or isinstance(p, int))
    )
    key = ".".join(loc) or "<root>"
    if err["type"] == "extra_forbidden":
        known = _known_keys(schema or Config, loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.5)
        hint = f" (did you mean '{'.'.join(loc[:-1] + (close[0],))}'?)" if close else ""
        return f"unknown config key '{key}'{hint}; valid keys here: {', '.join(known)}"
    if err["type"] == "missing":
        return f"config key '{key}' is missing"
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"config key '{key}': {msg}{shown}"


def _merge(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge config layers, later ones winning. A layer that names another env.import starts
    that env's kwargs from {}: one env's kwargs never leak into another."""
    try:
        merged = OmegaConf.create({})
        for layer in layers:
            env = layer.get("env")
            previous = merged.env.get("import") if merged.get("env") else None
            if isinstance(env, dict) and previous is not None and env.get("import", previous) != previous:
                merged.env.kwargs = {}
            merged = OmegaConf.merge(merged, OmegaConf.create(layer))
        return OmegaConf.to_container(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot merge config: {str(e).splitlines()[0]}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Compose, override and validate a config. Raises ConfigError with a one-line message."""
    layers = [_read_yaml(BASE_CONFIG)]
    layers += _compose(Path(path) if path else DEFAULT_CONFIG)
    layers.append(_parse_overrides(overrides or []))
    merged = _merge(layers)
    try:
        config = Config.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(_format_error(e.errors()[0])) from None
    _check_defense(config)
    _check_against_env(config)
    return config


def _check_defense(config: Config, where: str = "") -> None:
    """The ``defense`` section against its defense's schema, completed with its defaults."""
    from marl.defenses import validate_defense

    try:
        config.defense = validate_defense(config.defense)
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None


def build_env(env_config: EnvConfig):
    """The TeamEnv of a config's ``env`` section, or a ConfigError naming the key at fault
    (train, resume and evaluate all build it through here)."""
    import gymnasium as gym

    from envs.adapter import TeamEnv, TeamGroupingError
    from envs.errors import MissingDependency

    name = env_config.import_
    try:
        return TeamEnv(env_config.model_dump(by_alias=True, mode="json"))
    except MissingDependency as e:
        raise ConfigError(f"config key 'env.import': {name} cannot run here: {e}") from None
    except ModuleNotFoundError as e:
        extra = OPTIONAL_EXTRAS.get((e.name or "").split(".")[0])
        hint = f" (install it: pip install -e '.[{extra}]')" if extra else ""
        raise ConfigError(f"config key 'env.import': {name} needs the package '{e.name}'{hint}") from None
    except TeamGroupingError as e:
        raise ConfigError(f"config key 'env.teams': {e}") from None
    except (TypeError, ValueError, KeyError, gym.error.Error) as e:
        raise ConfigError(f"config key 'env.kwargs': {name} rejects them ({type(e).__name__}: {e})") from None


def _check_against_env(config: Config) -> None:
    """Build the env once: its kwargs, teams and the graph's agent indices must fit it."""
    env = build_env(config.env)
    sizes = [s.n_agents for s in env.specs.values()]
    for team, role in config.teams.items():
        if team not in env.specs:
            raise ConfigError(f"config key 'teams.{team}': the env has no team '{team}' (teams: {', '.join(env.specs)})")
        if role.role == "frozen":
            _check_frozen_team(team, role, env)
    if all(config.teams.get(t, TeamRole()).role != "train" for t in env.specs):
        raise ConfigError("config key 'teams': every team is frozen or scripted; at least one must train")
    from marl.defenses import defense_for

    defense = defense_for(config)
    try:
        if defense is not None:
            defense.check(config, env)
    finally:
        env.close()
    if config.runners.batched:
        _check_batched(config)
    for j, i in config.model.graph.edges:
        if max(i, j) >= min(sizes):
            raise ConfigError(
                f"config key 'model.graph.edges': edge [{j}, {i}] names an agent outside 0..{min(sizes) - 1}"
            )


def _check_batched(config: Config) -> None:
    """``runners.batched`` needs an env with a batched form, and refuses what the batched
    runner does not do (marl/batched_runner.py), each with the key at fault."""
    from envs.batched import BATCHED_FACTORY, resolve_batched_factory

    key = "config key 'runners.batched'"
    if resolve_batched_factory(config.env.import_) is None:
        raise ConfigError(
            f"{key}: env '{config.env.import_}' has no batched form (a '{BATCHED_FACTORY}' function "
            "beside its parallel_env; envs.smax and envs.vmas_env have one); set runners.batched=false"
        )
    refused = {
        "env.teams": (config.env.teams, "one team of every agent (env.teams: null)"),
        "model.agent_modeling": (config.model.agent_modeling, "no agent-modelling history (null)"),
        "model.recurrent": (config.model.recurrent, "a feed-forward model (null): it carries no hidden state"),
        "defense": (config.defense, "no training-time defense (null)"),
        "runners.nonfinite_env_output": (
            config.runners.nonfinite_env_output != "error", "'error' (NaN from the env ends the run)"
        ),
    }
    for name, (value, expected) in refused.items():
        if value:
            raise ConfigError(f"{key}: the batched runner needs {name} = {expected}; set runners.batched=false to use it")


def config_from_file(path: Path) -> Config:
    """Validate a resolved config (a run's config.yaml). Keys added to configs/base.yaml since
    the run was made take their defaults, so older runs still evaluate and resume."""
    try:
        config = Config.model_validate(_merge([_read_yaml(BASE_CONFIG), _read_yaml(path)]))
    except ValidationError as e:
        raise ConfigError(f"{path}: {_format_error(e.errors()[0])}") from None
    _check_defense(config, where=f"{path}: ")
    return config


def _check_frozen_team(team: str, role: TeamRole, env) -> None:
    """The frozen module, read from its checkpoint's safe weights (marl/checkpoints.py, never
    a pickle), must fit this env's team: same observation and action shapes."""
    from marl.checkpoints import check_team_fits, frozen_source

    source, name = frozen_source(team, role)
    try:
        check_team_fits(source, name, env, env_team=team)
    except ConfigError as e:
        raise ConfigError(f"config key 'teams.{team}.checkpoint': {e}") from None


# Composition helpers shared with other config schemas (adversaries/config.py).
read_yaml, compose, parse_overrides, merge_layers, format_error = (
    _read_yaml, _compose, _parse_overrides, _merge, _format_error
)
