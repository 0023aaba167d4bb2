"""The ``tierpoint`` command line: list, drain, clean up, verify and inspect checkpoints.

Every command either does its work or prints ONE line on stderr, ``tierpoint <command>:
<what is wrong with which path or option>; <what to do>``, and exits with a status that tells
"checked and found damage" (1) from "could not run" (2); never a traceback, unless
TIERPOINT_DEBUG is set. Paths are checked before the library is asked anything, so that a
typo is called a typo ("does not exist") and not a damaged checkpoint.

Here: the parser, the reference generated from it, and ``main`` (which turns every error into
that one line). The commands: ``cli_tiers`` (ls, drain, gc), ``cli_trust`` (verify, lineage,
audit, info, diff), ``cli_hf`` (export, import); what they share (statuses, path checks): ``cli_common``.
``tierpoint --help-all`` prints the reference of every command; the README's "Command line"
section is that text (tests/test_cli.py compares them).
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
import traceback

from .common import EXIT_OK, EXIT_PIPE, EXIT_USAGE, CliParser, at_least, one_line, rate
from .hf import cmd_export, cmd_import
from .tiers import cmd_drain, cmd_gc, cmd_ls
from .trust import (cmd_audit_show, cmd_audit_verify, cmd_diff, cmd_info, cmd_lineage,
                        cmd_verify)
from ..errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError
from ..version import __version__

DESCRIPTION = """\
List, drain, clean up, verify and inspect tierpoint checkpoints.

A tier root holds one directory per run (ROOT/RUN); a run holds its checkpoints
(ROOT/RUN/step_<8 digits>). CKPT is such a step directory, on a node-local tier or on the
capacity tier (its first pool). 'tierpoint --help-all' prints every command's options."""

EPILOG = """\
exit status:
  0    done (verify: every chunk checked, nothing damaged)
  1    checked and found damage or a difference (verify, diff, lineage, audit verify)
  2    could not run: bad usage, a missing or wrong path, unreadable metadata,
       an unknown run or step, an option out of range
  3    verify found no damage but could not check every chunk of the checkpoint in
       this copy (other nodes' chunks); --partial accepts such a check
  141  standard output was closed early (e.g. piped into head); nothing is printed

environment:
  TIERPOINT_DEBUG=1         print the Python traceback of an error (for developers)
  TIERPOINT_AUDIT_KEY_FILE  HMAC key file of the audit logs (default of audit verify --key;
                            verify signs the record it appends with it)
  TIERPOINT_NODE            this node's name (default: the hostname), for drain and gc"""


def cmd_demo(args) -> int:
    from .demo import main_demo
    try:
        return main_demo(args.demo_argv)
    except SystemExit as e:  # the demo's own refusals and usage errors: "could not run"
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            return EXIT_USAGE
        return EXIT_USAGE if e.code else EXIT_OK


# ---- the parser, and the reference generated from it --------------------------------------

def _add_json(p) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _add_pools(p, required=False, help="capacity pools (the first holds the heads and logs)"):
    p.add_argument("--persistent", nargs="+", default=[], required=required, metavar="POOL",
                   help=help)


def _command(sub, name: str, help: str, **kwargs):
    p = sub.add_parser(name, help=help, description=help, **kwargs)
    p.set_defaults(parser=p)  # the innermost command's parser reports unknown arguments
    return p


def _add_commands(sub) -> None:
    p = _command(sub, "ls", "checkpoints per step: tiers, age, size, last verification")
    p.add_argument("root", metavar="ROOT", help="a tier root (it holds one directory per run)")
    p.add_argument("--run", metavar="R", help="only this run")
    _add_pools(p, help="also list what these capacity pools hold")
    _add_json(p)
    p.set_defaults(func=cmd_ls)
    p = _command(sub, "drain", "copy what a job left on this node's local tier to the "
                                     "capacity pools (each run's newest step, or --step)")
    p.add_argument("--local", required=True, metavar="ROOT", help="the node's local tier root")
    _add_pools(p, required=True)
    p.add_argument("--run", metavar="R", help="only this run")
    p.add_argument("--step", type=at_least(0), metavar="S", help="this step (needs --run when "
                   "the root holds several runs)")
    p.add_argument("--rate", type=rate, metavar="BYTES_PER_S", help="bandwidth cap")
    p.set_defaults(func=cmd_drain)
    p = _command(sub, "gc", "apply retention; remove what interrupted saves, drains and "
                                  "deletions left (run it when no job writes the run)")
    p.add_argument("--local", required=True, metavar="ROOT", help="the node's local tier root")
    _add_pools(p, help="also apply the capacity tier's retention to these pools")
    p.add_argument("--run", metavar="R", help="only this run")
    p.add_argument("--keep-local", type=at_least(1), default=2, metavar="K",
                   help="newest committed checkpoints kept on the local tier (default 2)")
    p.add_argument("--keep-persistent", type=at_least(1), metavar="M",
                   help="newest checkpoints kept on the capacity tier (default: all)")
    p.add_argument("--keep-every", type=at_least(1), metavar="N",
                   help="the capacity tier also keeps every step divisible by N")
    p.add_argument("--pin", type=at_least(0), nargs="+", default=[], metavar="STEP",
                   help="steps the capacity tier keeps forever (with --keep-persistent or "
                        "--keep-every)")
    p.set_defaults(func=cmd_gc)
    p = _command(sub, "verify", "recompute every check of checkpoints; exit 1 on damage, "
                                      "3 when not every chunk could be checked")
    p.add_argument("target", metavar="CKPT", nargs="?",
                   help="a step directory: the one checkpoint to verify")
    p.add_argument("--all", metavar="ROOT",
                   help="instead: every committed checkpoint under this tier root (and the "
                        "first pool)")
    _add_pools(p, help="with --all: also the checkpoints on these capacity pools")
    p.add_argument("--run", metavar="R", help="with --all: only this run")
    p.add_argument("--partial", action="store_true",
                   help="accept a check of the chunks this copy holds (one node's local tier "
                        "of a multi-node checkpoint)")
    _add_json(p)
    p.set_defaults(func=cmd_verify)
    p = _command(sub, "lineage", "a checkpoint's ancestors across runs, digests checked")
    p.add_argument("target", metavar="CKPT", help="a committed step directory")
    p.add_argument("--root", nargs="+", default=[], metavar="ROOT",
                   help="tier roots (directories, or s3://BUCKET/PREFIX) to look for "
                        "ancestors no longer where they were read")
    _add_json(p)
    p.set_defaults(func=cmd_lineage)
    audit = _command(sub, "audit", "a run's hash-chained audit log")
    actions = audit.add_subparsers(dest="action", required=True, metavar="{verify,show}")
    p = _command(actions, "verify", "find changed, removed, inserted or reordered records, "
                                    "and checkpoints the log does not record (a log cut short)")
    p.add_argument("log", metavar="LOG", help="audit.jsonl, or the run directory that holds "
                                              "it, or a run's URL s3://BUCKET/PREFIX/RUN")
    p.add_argument("--key", metavar="FILE", help="HMAC key file (default: "
                                                 "TIERPOINT_AUDIT_KEY_FILE)")
    p.add_argument("--local", nargs="+", default=[], metavar="ROOT",
                   help="node-local tier roots whose copies of the run are checked against "
                        "the log too (the step directories beside the log always are)")
    _add_json(p)
    p.set_defaults(func=cmd_audit_verify)
    p = _command(actions, "show", "the records of the log (unchecked)")
    p.add_argument("log", metavar="LOG", help="audit.jsonl, or the run directory that holds "
                                              "it, or a run's URL s3://BUCKET/PREFIX/RUN")
    _add_json(p)
    p.set_defaults(func=cmd_audit_show)
    p = _command(sub, "info", "arrays, shapes, dtypes, save layout, lineage, metadata")
    p.add_argument("target", metavar="CKPT", help="a committed step directory")
    _add_json(p)
    p.set_defaults(func=cmd_info)
    p = _command(sub, "diff", "per array: identical (by fingerprint, no data read) or how "
                                    "different; exit 1 when they differ")
    p.add_argument("a", metavar="A", help="a committed step directory")
    p.add_argument("b", metavar="B", help="another, of any run, tier and save layout")
    _add_json(p)
    p.set_defaults(func=cmd_diff)
    p = _command(sub, "export", "write a checkpoint as Hugging Face safetensors files (one "
                                "process, any saving world size; the audit log records each "
                                "file's SHA-256)")
    p.add_argument("target", metavar="CKPT", help="a committed step directory (either tier) "
                   "or an object store's step URL")
    p.add_argument("out", metavar="OUT", help="the directory to write (new or empty)")
    p.add_argument("--format", choices=["safetensors"], required=True,
                   help="the output format (safetensors)")
    p.add_argument("--select", action="append", default=[], metavar="PATTERN",
                   help="export only arrays whose exported name (the state key joined with "
                        "dots, e.g. model.lm_head.weight) matches this glob; repeatable")
    p.add_argument("--rename", action="append", default=[], metavar="FROM=TO",
                   help="replace the prefix FROM of exported names by TO (e.g. model.=); "
                        "repeatable, the first that matches applies")
    p.add_argument("--max-shard-size", default="5GB", metavar="SIZE",
                   help="the largest file (default 5GB; memory holds one array at a time, "
                        "whatever the size)")
    p.add_argument("--config", metavar="FILE", help="a config.json to copy beside the weights")
    _add_pools(p, help="the run's capacity tier (pools, or s3://BUCKET/PREFIX): record the "
                       "export in its audit log (default: the log beside CKPT; a node-local "
                       "copy of a run with a capacity tier has none)")
    p.add_argument("--progress", action="store_true", default=None,
                   help="show the progress bar on stderr (default: when stderr is a terminal "
                        "and not --json)")
    p.add_argument("--no-progress", action="store_false", dest="progress",
                   help="never show the progress bar")
    _add_json(p)
    p.set_defaults(func=cmd_export)
    p = _command(sub, "import", "write a Hugging Face safetensors directory, or a DCP "
                                "checkpoint directory, as a checkpoint whose lineage names "
                                "the source and each source file's SHA-256")
    p.add_argument("src", metavar="SRC", help="a Hugging Face model directory (*.safetensors; "
                   "pickle weights are refused) or a torch.distributed.checkpoint directory")
    p.add_argument("--local", required=True, metavar="ROOT", help="the tier root to write to")
    p.add_argument("--run", required=True, metavar="R", help="the run to write")
    p.add_argument("--step", required=True, type=at_least(0), metavar="S",
                   help="the step to write")
    p.add_argument("--into", metavar="KEY",
                   help="the state key a safetensors directory's tensors go under (default "
                        "model, as {'model': model.state_dict()}; '' for the top level; a DCP "
                        "directory keeps its own nesting)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="read a DCP directory's .metadata, which is a pickle (loading a "
                        "pickle can run any code its writer put in it): only for a source "
                        "you trust")
    _add_json(p)
    p.set_defaults(func=cmd_import)
    from .demo import demo_parser
    # The demo parses its own options (main_demo); its parser is a parent here for the
    # reference and --help only.
    _command(sub, "demo", "train on 4 MPI ranks with checkpoints, restore on 3 (make demo)",
             parents=[demo_parser()], add_help=False).set_defaults(func=cmd_demo)


class _HelpAll(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(reference(parser))
        parser.exit()


def build_parser() -> CliParser:
    parser = CliParser(prog="tierpoint", description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"tierpoint {__version__}")
    parser.add_argument("--help-all", action=_HelpAll,
                        help="print the reference of every command and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_commands(sub)
    return parser


def _subcommands(parser, prefix: str = "tierpoint"):
    """(name, parser) of every command, nested ones ("audit verify") included, in order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = list(_subcommands(sub, f"{prefix} {name}"))
                yield from nested or [(f"{prefix} {name}"[len("tierpoint "):], sub)]


def _synopsis_of(action) -> str:
    if not action.option_strings:
        name = action.metavar or action.dest.upper()
        return name + ("..." if action.nargs in ("+", "*") else "")
    text = action.option_strings[-1]
    if action.nargs != 0:
        text += f" {action.metavar or action.dest.upper()}"
        text += "..." if action.nargs in ("+", "*") else ""
    return text if action.required else f"[{text}]"


def _options(sub) -> list:
    return [a for a in sub._actions if a.help is not argparse.SUPPRESS and
            not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


_WIDTH = 96  # of the reference's lines (the README's code blocks)


def reference(parser) -> str:
    """Every command, its synopsis and each argument's help: the README's CLI reference.
    Built from the actions, not argparse's usage text, so it does not depend on the
    terminal's width."""
    out = []
    for name, sub in _subcommands(parser):
        actions = _options(sub)
        words = [f"tierpoint {name}"] + [_synopsis_of(a).replace(" ", "\xa0") for a in actions]
        out += [line.replace("\xa0", " ") for line in
                textwrap.wrap(" ".join(words), _WIDTH, subsequent_indent=" " * 8,
                              break_on_hyphens=False)]  # never inside "[--opt ARG]"
        out += textwrap.wrap(sub.description, _WIDTH, initial_indent=" " * 4,
                             subsequent_indent=" " * 4)
        for a in actions:
            arg = _synopsis_of(a).strip("[]")
            out += textwrap.wrap(f"{arg:<24} {a.help or ''}", _WIDTH, initial_indent=" " * 6,
                                 subsequent_indent=" " * 31, break_on_hyphens=False)
    return "\n".join(out)


# ---- main: one line on stderr, the right exit status, no traceback ------------------------

def _message(command: str, error: Exception) -> str:
    text = one_line(error)
    if text.startswith(f"{command}: "):  # the library prefixes some messages the same way
        text = text[len(command) + 2:]
    if isinstance(error, CheckpointNotFoundError) and "tierpoint ls" not in text:
        return f"{text}; 'tierpoint ls ROOT' lists the committed checkpoints"
    if isinstance(error, CorruptCheckpointError) and "tierpoint verify" not in text:
        return f"{text}; 'tierpoint verify' names every problem (use another copy if there is one)"
    if isinstance(error, CheckpointError):
        return text
    if isinstance(error, OSError):
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror or text}; check the path and its permissions"
    return (f"unexpected {type(error).__name__}: {text}; rerun with TIERPOINT_DEBUG=1 for the "
            "traceback and report it")


def _stdout_closed() -> int:
    """The reader of stdout went away (``| head``): point stdout at /dev/null so that the
    interpreter's final flush does not fail again, and exit quietly (Python's documented
    way, see the signal module's note on SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a file descriptor (captured in a test)
        pass
    return EXIT_PIPE


def _run(command: str, call) -> int:
    from ..options import debug
    try:
        status = call()
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        return _stdout_closed()
    except KeyboardInterrupt:
        print(f"tierpoint {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug():
            traceback.print_exc()
        print(f"tierpoint {command}: {_message(command, e)}", file=sys.stderr)
        return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    """The ``tierpoint`` command; returns the exit status (argparse's exits included)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        try:
            args, rest = parser.parse_known_args(argv)
            if args.func is cmd_demo:  # the demo parses its own options (checked here already)
                args.demo_argv = argv[argv.index("demo") + 1:]
            elif rest:
                args.parser.error(f"unrecognized arguments: {' '.join(rest)}")
        finally:
            sys.stdout.flush()  # --help and --help-all text, while a closed pipe can be caught
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    except BrokenPipeError:
        return _stdout_closed()
    command = args.command + (f" {args.action}" if args.command == "audit" else "")
    return _run(command, lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
