"""Command line: ``run.py train | resume | evaluate | attack | report | detect | sweep | submit | jobs``.

Bad input ends a command with exit code 2 and one ``error: ...`` line on stderr, before
anything is created. A run that stops (diverged, an env that keeps failing or returns NaN, or
any other failure, whose traceback goes to RUN_DIR/error.log) ends with exit code 1 and one
``error: ...`` line, and keeps its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
import warnings
from pathlib import Path

from marl.cluster import DEFAULT_STORAGE, STORAGE_ENV
from marl.errors import RunStopped, UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as for every other bad input
        raise UserError(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="run.py", description="Multi-agent RL on Ray RLlib's new API stack.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    # Commands that start Ray: a private local instance, unless told to join a cluster.
    ray_opts = _Parser(add_help=False)
    ray_opts.add_argument(
        "--address", metavar="auto|HOST:PORT",
        help="join this running Ray cluster (also: RAY_ADDRESS); default: a private local Ray "
        "instance that ignores any other cluster on the machine",
    )

    t = sub.add_parser("train", parents=[ray_opts], help="train a team from a config; prints the run directory last")
    t.add_argument("config", nargs="?", help="YAML config (default: configs/default.yaml)")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. algo.lr=3e-4 seed=1")

    r = sub.add_parser("resume", parents=[ray_opts], help="continue a run from its last checkpoint")
    r.add_argument("run_dir", type=Path)

    e = sub.add_parser("evaluate", help="evaluate a checkpoint (or a run directory's latest)")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("--episodes", type=int, default=20, help="number of episodes (default 20)")
    e.add_argument("--json", type=Path, help="also write the results to this JSON file")
    e.add_argument("--deterministic", action="store_true", help="take each agent's most likely action")
    e.add_argument("--seed", type=int, default=12345, help="seed of the evaluation episodes")
    e.add_argument(
        "--decentralized", action="store_true",
        help="force the empty graph: each agent acts on its own observation only",
    )
    e.add_argument(
        "--exploitability", action="store_true",
        help="games with an exact tree (Kuhn poker): print the profile's exact exploitability "
        "(OpenSpiel) and its ε-budgeted exploitability instead of playing episodes",
    )
    e.add_argument(
        "--export-policy", type=Path, metavar="FILE.json",
        help='with an exact game: write {"game": ..., "policy": {info_state: [p_0, p_1, ...]}}',
    )

    a = sub.add_parser(
        "attack", parents=[ray_opts],
        help="train an attacker against a trained team (if the adversary trains), then evaluate "
        "clean vs attacked on paired seeds; prints the run directory last",
    )
    a.add_argument("victim", help="the victim: a checkpoint or a run directory (its latest)")
    a.add_argument("--adversary", required=True, help="a registered adversary, e.g. random, gleave, obs_pgd, ami")
    a.add_argument(
        "rest", nargs="*", metavar="[CONFIG] [key=value ...]",
        help="attack YAML config (defaults: configs/attack/base.yaml) and dotted overrides, "
        "e.g. adversary.agents=[1] seed=1",
    )

    rp = sub.add_parser(
        "report",
        help="turn attack runs (grouped by victim and attack over seeds) into report.md, "
        "report.json and PNGs",
    )
    rp.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                    help="attack run directories, or folders that hold them")
    rp.add_argument("--out", type=Path, help="a new or empty directory (default: runs/report-<time>)")

    sw = sub.add_parser(
        "sweep", parents=[ray_opts],
        help="run a grid of configs on Ray Tune, each trial a normal run directory; writes "
        "summary.md, summary.json and summary.png; prints the sweep directory last",
    )
    sw.add_argument("config", nargs="?", help="YAML config (default: configs/default.yaml)")
    sw.add_argument("overrides", nargs="*", help="dotted overrides for every trial, e.g. train.total_env_steps=1e5")
    sw.add_argument(
        "--grid", nargs="+", action="extend", default=[], metavar="KEY=V1,V2",
        help="grid axes, e.g. --grid seed=0,1,2 algo.lr=3e-4,5e-4 (every combination is a trial; "
        "an item with one value is an override of every trial)",
    )
    sw.add_argument("--samples", type=int, default=1,
                    help="N seeds of each grid point: seed, seed+1, ..., seed+N-1 (without a seed axis)")
    sw.add_argument("--out", type=Path, help="a new or empty directory (default: <output_dir>/sweep-<name>-<time>)")
    sw.add_argument("--resume", type=Path, metavar="SWEEP_DIR",
                    help="continue a sweep: finished trials are not re-run, started ones continue "
                    "from their last checkpoint")
    sw.add_argument("--summary", type=Path, metavar="SWEEP_DIR", help="rebuild a sweep's summary only")

    d = sub.add_parser(
        "detect",
        help="CLAM as an attack detector: train a teammate's representation on clean episodes of "
        "the victim, then the detection ROC AUC of each attack run against t; writes detection.json",
    )
    d.add_argument("victim", type=Path, help="the victim the attack runs attacked: a checkpoint or run directory")
    d.add_argument("attack_runs", nargs="+", type=Path, metavar="ATTACK_RUN",
                   help="attack run directories (run.py attack), or folders that hold them")
    d.add_argument("--out", type=Path, help="a new or empty directory (default: runs/detect-<time>)")
    d.add_argument("--episodes", type=int, default=64, help="paired clean/attacked episodes per attack run")
    d.add_argument("--train-episodes", type=int, default=200, help="clean episodes CLAM is trained on")
    d.add_argument("--steps", type=int, default=1500, help="CLAM training steps")
    d.add_argument("--history", type=int, default=None,
                   help="steps of each episode scored (default: the env's own history where a victim or "
                   "attacker models agents, else 50)")

    # Ray Jobs (marl/cluster.py; README, "Run on a cluster").
    cluster = _Parser(add_help=False)
    cluster.add_argument(
        "--address", metavar="http://HEAD:8265",
        help="the Ray cluster's dashboard (also: RAY_API_SERVER_ADDRESS); its token comes from "
        "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token",
    )
    s = sub.add_parser(
        "submit", parents=[cluster],
        help="run a command (train, resume, attack, report, sweep, ...) as a Ray job on a cluster; "
        "prints the job id",
        description="Submit `run.py COMMAND ARGS...` as a Ray job: the project is its working_dir, "
        "its runs/ is --storage on the cluster. The options below may also follow COMMAND.",
    )
    s.add_argument("--storage", metavar="DIR",
                   help=f"the cluster's storage directory: the job's runs/ (default: {DEFAULT_STORAGE}, "
                   "on the node that runs the job; use a shared path on a multi-node cluster)")
    s.add_argument("--no-pip", action="store_true",
                   help="the cluster already has the project's requirements: install nothing "
                   "(default: the job's runtime_env pip-installs them, pinned to the versions here)")
    s.add_argument("--extras", default="", metavar="A,B",
                   help="optional requirement groups of pyproject.toml to install too, e.g. mujoco,smax")
    s.add_argument("--num-cpus", type=float, help="CPUs reserved for the job's driver")
    s.add_argument("--num-gpus", type=float, help="GPUs reserved for the job's driver")
    s.add_argument("job_command", metavar="COMMAND", help="a run.py command, e.g. train")
    s.add_argument("job_args", nargs=argparse.REMAINDER, metavar="ARGS", help="its arguments")

    j = sub.add_parser("jobs", help="list, follow, stop and fetch Ray jobs")
    jsub = j.add_subparsers(dest="jobs_command", required=True, parser_class=_Parser)
    jsub.add_parser("list", parents=[cluster], help="the cluster's submitted jobs")
    for name, text in (("status", "a job's status, and a failed job's own error line"),
                       ("logs", "a job's logs"), ("stop", "stop a job")):
        jp = jsub.add_parser(name, parents=[cluster], help=text)
        jp.add_argument("job_id")
        if name == "logs":
            jp.add_argument("--follow", "-f", action="store_true", help="print new lines until the job ends")
    f = jsub.add_parser("fetch", parents=[cluster],
                        help="copy a finished job's run directory from the cluster into DEST/")
    f.add_argument("job_id")
    f.add_argument("dest", type=Path, metavar="DEST")
    return p


def _split_train_args(config: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    # `train algo.lr=1e-3` (no config file): the first positional is an override.
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        return None, [config, *overrides]
    return config, overrides


def _cmd_train(args) -> int:
    from marl.config import load_config

    config, overrides = _split_train_args(args.config, [*args.overrides, *args.extra])
    cfg = load_config(config, overrides)
    from marl.train import train

    run_dir = train(cfg)
    print(run_dir)
    return 0


def _cmd_resume(args) -> int:
    from adversaries.config import is_attack_run

    if is_attack_run(args.run_dir):  # config.yaml says `kind: attack`
        from adversaries.run import load_attack_run, resume_attack

        load_attack_run(args.run_dir)  # validate before Ray starts
        print(resume_attack(args.run_dir))
        return 0
    from marl.train import load_run, resume

    load_run(args.run_dir)  # validate before Ray starts
    run_dir = resume(args.run_dir)
    print(run_dir)
    return 0


def _cmd_attack(args) -> int:
    from adversaries.config import load_attack_config

    rest = [*args.rest, *args.extra]  # positionals after --adversary arrive as extras
    config, overrides = _split_train_args(rest[0] if rest else None, rest[1:])
    setup = load_attack_config(config, overrides, victim=args.victim, adversary=args.adversary)
    from adversaries.run import attack

    print(attack(setup))
    return 0


def _cmd_evaluate(args) -> int:
    if args.episodes < 1:
        raise UserError(f"--episodes must be a positive integer (got {args.episodes})")
    if args.json is not None and not args.json.parent.is_dir():
        raise UserError(f"--json: directory '{args.json.parent}' does not exist")
    if args.export_policy is not None and not args.export_policy.parent.is_dir():
        raise UserError(f"--export-policy: directory '{args.export_policy.parent}' does not exist")
    if args.exploitability or args.export_policy is not None:
        from marl.exploitability import exact_evaluation

        result, table, game = exact_evaluation(args.checkpoint, args.deterministic)
        if args.export_policy is not None:
            _write_atomic(args.export_policy, json.dumps({"game": game, "policy": table}, indent=2))
    else:
        from marl.evaluate import evaluate

        result = evaluate(args.checkpoint, args.episodes, args.deterministic, args.seed, args.decentralized)
    text = json.dumps(result, indent=2)
    if args.json is not None:
        _write_atomic(args.json, text)
    print(text)
    return 0


def _write_atomic(path: Path, text: str) -> None:
    if path.is_dir():
        raise UserError(f"'{path}' is a directory; expected a file name to write")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)


def _cmd_report(args) -> int:
    from adversaries.report import default_out_dir, write_report

    out = args.out or default_out_dir()
    write_report(args.run_dirs, out)
    print(out / "report.md")
    return 0


def _cmd_sweep(args) -> int:
    from marl import sweep

    existing = [(flag, path) for flag, path in (("--resume", args.resume), ("--summary", args.summary)) if path]
    if existing:
        flag, path = existing[0]
        given = [x for x in ([args.config] if args.config else []) + args.overrides + args.extra + args.grid]
        if len(existing) > 1 or given or args.out or args.samples != 1:
            raise UserError(f"{flag} SWEEP_DIR takes no config, --grid, --samples, --out or overrides: "
                            "the sweep's own sweep.json says what to run")
        plan = sweep.load_sweep(path)
        if flag == "--resume":
            summary = sweep.run_sweep(path, plan)
        else:
            summary = sweep.write_summary(path, plan)
    else:
        config, overrides = _split_train_args(args.config, [*args.overrides, *args.extra])
        plan, configs, base = sweep.plan_sweep(config, overrides, args.grid, args.samples)
        path = args.out or sweep.default_sweep_dir(base)
        sweep.check_new_dir(path)
        from marl.train import init_ray

        init_ray()  # before the sweep directory: a cluster that cannot be joined leaves nothing behind
        sweep.check_fits(configs)  # ... nor one that cannot hold a trial
        sweep.create_sweep(plan, configs, path)
        print(f"sweep directory: {path} (continue a stopped sweep with: run.py sweep --resume {path})",
              file=sys.stderr)
        summary = sweep.run_sweep(path, plan)
    print(sweep.markdown_table(summary), end="")
    print(path)
    return 0


def _cmd_detect(args) -> int:
    from datetime import datetime

    from adversaries.detection import DETECTION_FILE, DetectSettings, detect
    from adversaries.report import find_runs

    for name in ("episodes", "train_episodes", "steps", "history"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer (got {getattr(args, name)})")
    runs = [r.path for r in find_runs(args.attack_runs)]
    out = args.out or Path("runs") / f"detect-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    settings = DetectSettings(history=args.history, train_episodes=args.train_episodes,
                              episodes=args.episodes, steps=args.steps)
    detect(args.victim, runs, out, settings, log=lambda m: print(m, file=sys.stderr))
    print(out / DETECTION_FILE)
    return 0


def _submit_options(args) -> list[str]:
    """Submit's own options may follow COMMAND (`submit train cfg.yaml --address URL`): take
    them out of the arguments passed through."""
    options = {"--address": "address", "--storage": "storage", "--extras": "extras",
               "--num-cpus": "num_cpus", "--num-gpus": "num_gpus"}
    rest, it = [], iter(args.job_args)
    for arg in it:
        name, eq, value = arg.partition("=")
        if arg == "--no-pip":
            args.no_pip = True
        elif name in options:
            if not eq:
                value = next(it, None)
                if value is None:
                    raise UserError(f"run.py submit: argument {name}: expected one argument")
            setattr(args, options[name], value)
        else:
            rest.append(arg)
    for name in ("num_cpus", "num_gpus"):
        value = getattr(args, name)
        try:
            setattr(args, name, None if value is None else float(value))
        except ValueError:
            raise UserError(f"run.py submit: --{name.replace('_', '-')} expects a number (got '{value}')") from None
    return rest


def _cmd_submit(args) -> int:
    from marl import cluster

    rest = _submit_options(args)
    command = args.job_command
    if command in ("submit", "jobs") or command not in COMMANDS:
        choices = ", ".join(c for c in COMMANDS if c not in ("submit", "jobs"))
        raise UserError(f"run.py submit: unknown command '{command}'; expected one of: {choices}")
    # The command's own arguments, checked here as they would be there (exit 2, nothing submitted).
    inner, extra = _parser().parse_known_args([command, *rest])
    if extra and (command not in TAKES_OVERRIDES or any(x.startswith("-") for x in extra)):
        raise UserError(f"run.py {command}: unrecognized arguments: {' '.join(extra)}")
    if getattr(inner, "address", None):
        raise UserError("run.py submit: give --address once, the cluster's dashboard (a job joins its cluster by itself)")
    if command == "train":
        from marl.config import load_config

        load_config(*_split_train_args(inner.config, [*inner.overrides, *extra]))
    storage = args.storage or DEFAULT_STORAGE
    if not (storage.startswith("~") or os.path.isabs(storage)):  # the job's cwd is temporary
        raise UserError(f"run.py submit: --storage '{storage}' must be absolute or start with ~ (a path on the cluster)")
    extras = [e for e in args.extras.split(",") if e]
    runtime_env = cluster.job_runtime_env(storage, pip=not args.no_pip, extras=extras)
    client = cluster.Cluster(args.address)
    job_id = client.submit(
        cluster.job_entrypoint([command, *rest]), runtime_env,
        metadata={"marl_command": command, "marl_storage": storage},
        num_cpus=args.num_cpus, num_gpus=args.num_gpus,
    )
    print(f"submitted to {client.address}; follow it with: run.py jobs logs {job_id} --follow "
          f"--address {client.address}", file=sys.stderr)
    print(job_id)
    return 0


def _cmd_jobs(args) -> int:
    from marl import cluster

    client = cluster.Cluster(args.address)
    what = args.jobs_command
    if what == "list":
        for job in sorted(client.jobs(), key=lambda j: j.start_time or 0):
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time / 1000)) if job.start_time else "-"
            print(f"{job.submission_id}  {str(job.status):<9}  {started}  {job.entrypoint}")
    elif what == "status":
        info = client.info(args.job_id)
        print(f"{args.job_id}: {info.status}")
        if str(info.status) in ("FAILED", "STOPPED"):
            line = cluster.error_line(client.logs(args.job_id))
            if line:  # the job's own one line; on a cluster, resume through submit too
                print(line.replace("run.py resume ", f"run.py submit --address {client.address} resume "))
            elif info.message:  # Ray's own account (e.g. the entrypoint could not start)
                last = info.message.strip().splitlines()[-1]
                print(last if last.startswith("error:") else f"error: {last}")
    elif what == "logs":
        if args.follow:
            client.follow(args.job_id)
        else:
            print(client.logs(args.job_id), end="")
    elif what == "stop":
        print(f"{args.job_id}: {client.stop(args.job_id)}")
    elif what == "fetch":
        print(cluster.fetch(client, args.job_id, args.dest))
    return 0


class _Watched:
    """A stream that remembers its last non-empty line and the run directories named on it
    (``run directory: X`` / ``resuming X from ...``, as train, resume and attack print them;
    ``sweep X: N trials; ...``, as a sweep and its resume do)."""

    RUN_DIR = re.compile(r"^(?:run directory: (\S+)|resuming (\S+) from |sweep (\S+): \d+ trials;)")

    def __init__(self, stream):
        self.stream, self.last, self.run_dirs = stream, None, []

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                self.last = line
                m = self.RUN_DIR.match(line)
                if m:
                    self.run_dirs.append(m.group(1) or m.group(2) or m.group(3))
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


TAKES_OVERRIDES = {"train", "attack", "sweep"}  # positionals after an option arrive as extras
COMMANDS = {
    "train": _cmd_train, "resume": _cmd_resume, "evaluate": _cmd_evaluate, "attack": _cmd_attack,
    "report": _cmd_report, "detect": _cmd_detect, "sweep": _cmd_sweep, "submit": _cmd_submit,
    "jobs": _cmd_jobs,
}


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore")
    logging.getLogger("ray").setLevel(logging.ERROR)
    if not os.environ.get(STORAGE_ENV):
        return _main(argv)
    # Inside a submitted job: runs/ is the cluster's storage, and the last line names the
    # directory the command made (or the run its error line names), for `run.py jobs fetch`.
    from marl import cluster

    out, err = sys.stdout, sys.stderr = _Watched(sys.stdout), _Watched(sys.stderr)
    errors: list[str] = []
    code = 1
    try:
        code = _main(argv, errors, before=cluster.prepare_job_storage)
        return code
    finally:
        sys.stdout, sys.stderr = out.stream, err.stream
        named = ([out.last] if code == 0 and out.last else []) + err.run_dirs[::-1]
        made = cluster.job_output(named, errors[-1] if errors else None)
        if made is not None:
            print(f"{cluster.OUTPUT_MARKER} {made}", flush=True)


def _main(argv: list[str] | None, errors: list[str] | None = None, before=None) -> int:
    errors = [] if errors is None else errors
    try:
        parser = _parser()
        args, extra = parser.parse_known_args(argv)
        # argparse matches positionals once, before an option: `attack VICTIM --adversary X
        # CONFIG k=v` or `train CONFIG --address A k=v` leaves the rest as extras, which only
        # the commands that take overrides take.
        if extra and (args.command not in TAKES_OVERRIDES or any(x.startswith("-") for x in extra)):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.extra = extra
        if getattr(args, "address", None) and args.command not in ("submit", "jobs"):
            os.environ["RAY_ADDRESS"] = args.address  # read by marl.train.init_ray
        if before is not None:
            before()
        return COMMANDS[args.command](args)
    except (UserError, RunStopped) as e:  # bad input; or diverged, env faults, a crash logged to RUN_DIR/error.log, ...
        errors.append(f"error: {e}")
        sys.stdout.flush()
        print(errors[-1], file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; resume with `run.py resume RUN_DIR`", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
