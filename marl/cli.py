"""Command line: ``run.py train | resume | evaluate``.

Bad input ends a command with exit code 2 and one ``error: ...`` line on stderr, before
anything is created. A diverged run ends with exit code 1 and keeps its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from marl.errors import BuildFailed, TrainingDiverged, UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as for every other bad input
        raise UserError(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="run.py", description="Multi-agent RL on Ray RLlib's new API stack.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a team from a config; prints the run directory last")
    t.add_argument("config", nargs="?", help="YAML config (default: configs/default.yaml)")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. algo.lr=3e-4 seed=1")

    r = sub.add_parser("resume", help="continue a run from its last checkpoint")
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
    return p


def _split_train_args(config: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    # `train algo.lr=1e-3` (no config file): the first positional is an override.
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        return None, [config, *overrides]
    return config, overrides


def _cmd_train(args) -> int:
    from marl.config import load_config

    config, overrides = _split_train_args(args.config, args.overrides)
    cfg = load_config(config, overrides)
    from marl.train import train

    run_dir = train(cfg)
    print(run_dir)
    return 0


def _cmd_resume(args) -> int:
    from marl.train import load_run, resume

    load_run(args.run_dir)  # validate before Ray starts
    run_dir = resume(args.run_dir)
    print(run_dir)
    return 0


def _cmd_evaluate(args) -> int:
    if args.episodes < 1:
        raise UserError(f"--episodes must be a positive integer (got {args.episodes})")
    if args.json is not None and not args.json.parent.is_dir():
        raise UserError(f"--json: directory '{args.json.parent}' does not exist")
    from marl.evaluate import evaluate

    result = evaluate(args.checkpoint, args.episodes, args.deterministic, args.seed, args.decentralized)
    text = json.dumps(result, indent=2)
    if args.json is not None:
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, args.json)
    print(text)
    return 0


COMMANDS = {"train": _cmd_train, "resume": _cmd_resume, "evaluate": _cmd_evaluate}


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore")
    logging.getLogger("ray").setLevel(logging.ERROR)
    try:
        args = _parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except (TrainingDiverged, BuildFailed) as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; resume with `run.py resume RUN_DIR`", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
