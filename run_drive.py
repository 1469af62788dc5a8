#!/usr/bin/env python3
"""E2E Drive command line: a thin dispatcher. Each subcommand lives in its own module, which
defines `add_arguments(parser)` and `main(args) -> int`; no logic lives here.

Bad input ends with one line on stderr and a non-zero exit; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name, module, one-line help. Modules are imported only when their command runs, so
# `run_drive.py play` never imports torch and `run_drive.py --help` is instant.
_COMMAND_TABLE = """
demo     agent.demo      record, train, evaluate and write a report: the one-command tour
tracks   data.tracks     list the built-in tracks (procedural, challenge, 25 real circuits); --plot thumbnails
play     data.play       drive yourself in a window (keyboard, mouse or gamepad); every drive is recorded
record   data.record     record autopilot drives (the expert), with noise injection, in parallel
inspect  data.inspect    summarise recorded drives: table, steering histogram, plots
train    agent.train     behavioural cloning: train the CNN policy on recorded drives
eval     agent.evaluate  closed-loop evaluation of a policy (or the expert) on tracks
watch    agent.watch     watch a policy drive in a window; take over with a key
dagger   agent.dagger    DAgger: the policy drives, the expert labels, retrain, repeat
saliency agent.saliency  what the network looks at: saliency maps over camera frames
export   agent.export    write a policy as one self-contained ONNX file (runs in onnxruntime, off Python)
benchmark agent.benchmark the fixed ladder of levels that scores a policy the same way every time
bench    agent.bench     speed: env steps/s vs CarRacing-v3, render, training and policy latency
"""
COMMANDS = {name: (module, help_text) for name, module, help_text in
            (line.split(None, 2) for line in _COMMAND_TABLE.strip().splitlines())}

EPILOG = """examples:
  python run_drive.py demo                      # the whole tour on built-in tracks, no display needed
  python run_drive.py play --track procedural:3 --out data/drives/me
  python run_drive.py record --autopilot --tracks procedural:0-19 --laps 1 --out data/drives/auto
  python run_drive.py train --data data/drives/auto --out data/models/pilot --minutes 10
  python run_drive.py eval --model data/models/pilot --tracks procedural:1000-1019 --laps 1
  python run_drive.py eval --expert --tracks real:all --laps 1 --json out.json
  python run_drive.py tracks real:all --plot circuits.png
  python run_drive.py export --model data/models/pilot --onnx data/models/pilot.onnx
  python run_drive.py eval --model data/models/pilot.onnx --tracks procedural:1000-1019 --laps 1
  python run_drive.py benchmark --model data/models/pilot --quick --json out/ladder.json
  python run_drive.py bench

Track SPECs: procedural:7, procedural:0-19, challenge:0-9, real:all, real:suzuka (any built-in circuit),
a CSV file, a folder of CSVs; join with commas. `run_drive.py tracks` lists them.
Run `python run_drive.py COMMAND --help` for each command's flags and examples. After `pip install .`
the command `e2e-drive` is the same as `python run_drive.py`."""


def _prog() -> str:
    """`e2e-drive` when run as the installed console command, else `run_drive.py`."""
    return "e2e-drive" if os.path.basename(sys.argv[0]) == "e2e-drive" else "run_drive.py"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_prog(), description="E2E Drive: learn to drive end to end, from camera pixels to steering.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    if not argv or argv[0] not in COMMANDS:
        parser = build_parser()
        if not argv:
            parser.print_help()
            return 0
        parser.parse_args(argv)  # prints help or "invalid choice" and exits
        return 2
    name = argv[0]
    module_name, help_text = COMMANDS[name]
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            print(f"error: the '{name}' command is not available in this version", file=sys.stderr)
            return 2
        raise
    parser = argparse.ArgumentParser(
        prog=f"{_prog()} {name}", description=help_text,
        epilog=getattr(module, "EXAMPLES", None), formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    args.debug = debug
    from sim.errors import UserError

    try:
        return int(module.main(args) or 0)
    except UserError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `e2e-drive tracks | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except OSError as e:
        if debug:
            raise
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
