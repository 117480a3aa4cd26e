"""``diffaudit`` command line: a thin layer over the library.

Each command lives in its own module ``diffaudit.cli.<name>`` exposing ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``; they are listed in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import importlib.util
import json
import os
import re
import signal
import sys
from contextvars import ContextVar

# Library chatter (diffusers' and transformers' advice about optional packages) is not for our users.
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from diffaudit import __version__  # noqa: E402
from diffaudit.cli.common import (  # noqa: E402
    StageInterrupted, StdoutClosed, current_stage, nested_setting_flags, set_quiet, speaking_as, write_stdout,
)
from diffaudit.core import folder_lock, interrupt  # noqa: E402
from diffaudit.core.errors import DiffauditError, StageFailedError  # noqa: E402

# Order shown in --help: the audit first, then the pipeline's stages.
COMMANDS = [
    "audit", "train", "sample", "export", "pool", "extract", "verify", "shadows", "mia", "inpaint",
    "dedup", "prompts", "canaries", "compare", "report", "membership",
]


_UNAVAILABLE: dict[str, str] = {}
QUIET_HELP = ("no progress bars, stage lines or result line; errors still print (the result is in --out, or on stdout "
              "with --json). DIFFAUDIT_QUIET=1 silences the bars and stage lines only")


def _available_commands(only: str | None = None):
    """Command modules (just ``only`` when given); one whose third-party dependency is missing is left
    out (and explained when called)."""
    for name in ([only] if only in COMMANDS else COMMANDS):
        module = f"diffaudit.cli.{name.replace('-', '_')}"
        try:
            yield importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue
            if exc.name and not exc.name.startswith("diffaudit"):
                _UNAVAILABLE[name] = f"`diffaudit {name}` needs the Python package {exc.name!r}: pip install {exc.name}"
                continue
            raise


def _summary(name: str) -> tuple[str, str] | None:
    """(NAME, HELP) of a command module read from its source without importing it (its imports take
    seconds); None when they are not plain string constants there."""
    spec = importlib.util.find_spec(f"diffaudit.cli.{name.replace('-', '_')}")
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    found: dict[str, str] = {}
    for node in ast.parse(open(spec.origin, encoding="utf-8").read()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("NAME", "HELP") and isinstance(node.value, ast.Constant):
                found[node.targets[0].id] = node.value.value
    return (found["NAME"], found["HELP"]) if {"NAME", "HELP"} <= found.keys() else None


def _overview_parser(parser: argparse.ArgumentParser) -> bool:
    """Add every command by name and one-line help only (for ``diffaudit`` / ``diffaudit --help``);
    False when a module's summary cannot be read without importing it."""
    summaries = [_summary(name) for name in COMMANDS]
    if any(x is None for x in summaries):
        return False
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_ in summaries:
        sub.add_parser(name, help=help_)
    return True


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter, adding "(default: X)" only where it tells the reader something.

    Not when the help already speaks of the default (it says "default", uses ``%(default)s`` or
    explains ``None: ...``), not for a None or empty default (the option's help says what "not given"
    means) and not for a flag that takes no value (``store_true`` and the like: off unless given); a
    list or tuple default reads as comma-separated values, the way it is typed.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if isinstance(default, (list, tuple)):
            default = ",".join(map(str, default))
        if (default is None or default is argparse.SUPPRESS or default == "" or action.nargs == 0
                or "default" in text.lower() or "None:" in text):
            return text
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text  # a required positional argument has no default to show
        return f"{text} (default: {str(default).replace('%', '%%')})"  # the help is %-formatted next


#: The command ``--json`` asked a JSON answer of (None: not asked), while its command line is parsed.
_JSON_FOR: ContextVar[tuple[str | None] | None] = ContextVar("json_for", default=None)
#: The command line being parsed (its options), for the flags a refusal of a missing one may suggest.
_RAW: ContextVar[list[str]] = ContextVar("raw_argv", default=[])


def _dash_value_hint(parser: argparse.ArgumentParser, message: str) -> str:
    """For argparse's "argument --targets: expected one argument" where the value given begins with a dash
    (``--targets -1,2``, read as an unknown flag): how to write it, ``--targets=-1,2``."""
    match = re.match(r"argument (--[\w-]+)(?:/[\w-]+)*: expected one argument", message)
    if not match:
        return ""
    raw, known = _RAW.get(), {f for a in parser._actions for f in a.option_strings}
    flag = match.group(1)
    for given, value in zip(raw, raw[1:]):
        if given == flag and value.startswith("-") and value.split("=", 1)[0] not in known:
            return f" (a value that begins with a dash is written {flag}={value})"
    return ""


class _Parser(argparse.ArgumentParser):
    """argparse's parser whose refusal of a command line (an unknown flag, a value of the wrong type)
    is also a JSON document on stdout when ``--json`` was given, as every other refusal is."""

    def error(self, message: str):
        if message.startswith("the following arguments are required"):  # `--sample X` for --samples: say so
            known = {f for a in self._actions for f in a.option_strings}
            unknown = [t.split("=", 1)[0] for t in _RAW.get() if t.startswith("--") and t.split("=", 1)[0] not in known]
            close = _close_flags(self, unknown)
            if close:
                message += f" ({', '.join(unknown)} is not an option here; did you mean {', '.join(close)}?)"
        message += _dash_value_hint(self, message)
        asked = _JSON_FOR.get()
        if asked is not None:
            self.print_usage(sys.stderr)
            print(f"{self.prog}: error: {message}", file=sys.stderr)
            write_stdout(json.dumps({"command": asked[0], "error": message, "exit_status": 2}, indent=2) + "\n")
            raise SystemExit(2)
        super().error(message)


def build_parser(only: str | None = None, *, overview: bool = False) -> argparse.ArgumentParser:
    """The CLI parser; with ``only``, just that command's sub-parser (command modules import torch and
    friends, so building every sub-parser costs seconds that a single command does not need); with
    ``overview`` and no command, the commands' names and one-line help only, read without importing."""
    parser = _Parser(
        prog="diffaudit",
        description="Audit image diffusion models for memorized training data: does the model emit "
                    "its training images, which ones, and how sure are we? (Carlini et al. 2023)",
    )
    parser.add_argument("--version", action="version", version=f"diffaudit {__version__}")
    parser.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    if overview and only is None and _overview_parser(parser):
        return parser
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _available_commands(only):
        # no abbreviated flags: `audit --config` tells given options by their full names, and a flag
        # added later must not change what an abbreviation in someone's script means
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=HelpFormatter, allow_abbrev=False)
        mod.add_arguments(p)
        out = p.add_argument_group("output")
        out.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP)
        out.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the result as JSON on stdout")
        p.set_defaults(_run=functools.partial(_run_naming_flags, mod, setting_names(p)))
    return parser


def _option_flags(p: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's destination -> its flag (``shard_size`` -> ``--shard-size``; a switch with a ``--no-``
    form by its positive one, ``--skip-bad``); positionals have none."""
    return {a.dest: a.option_strings[0 if isinstance(a, argparse.BooleanOptionalAction) else -1]
            for a in p._actions if a.option_strings and a.dest != "help"}


def setting_names(p: argparse.ArgumentParser) -> dict[str, str]:
    """Each setting a command's parser ``p`` sets -> its flag: an option's destination (``shard_size`` ->
    ``--shard-size``), and the nested settings named after options (``data.options.image_size`` ->
    ``--image-size``, :func:`~diffaudit.cli.common.nested_setting_flags`)."""
    flags = _option_flags(p)
    return {**nested_setting_flags(flags), **flags}


def _run_naming_flags(mod, flags: dict[str, str], args: argparse.Namespace) -> int:
    """``mod.run(args)``, a settings mismatch naming each setting by the flag that sets it: an option's
    own name (``micro_batch`` as ``--micro-batch``; nested: ``data.options.subset`` as ``--subset``,
    :func:`setting_names`), or what the command's ``setting_flags(args)`` says where a setting is named
    otherwise (sample's ``per_prompt``: ``--n`` or ``--per-prompt``); the inputs ``--skip-bad`` skips
    are listed in the results it writes (:func:`~diffaudit.core.results.recording_skipped`). Path options are
    checked first (:func:`~diffaudit.cli.common.check_paths`: none empty, ``--out`` no object store but
    where the command sets ``OUT_OBJECT_STORE``, nor inside a data folder)."""
    from diffaudit.cli.common import check_paths
    from diffaudit.core.outdir import flag_names
    from diffaudit.core.results import recording_skipped

    check_paths(args, mod.NAME, out_object_store=getattr(mod, "OUT_OBJECT_STORE", False))
    from diffaudit.core.progress import running_command

    own = getattr(mod, "setting_flags", None)
    with flag_names({**flags, **(own(args) if own else {})}), recording_skipped(), running_command(mod.NAME):
        return mod.run(args)


def main(argv: list[str] | None = None) -> int:
    """Run ``diffaudit ARGV``; the exit status.

    A reader of the output that stops early (``diffaudit compare A B | head -1``) ends the command
    quietly with status 1, not a BrokenPipeError traceback: the output was cut short, as ``cat``'s
    is when SIGPIPE ends it, so ``set -o pipefail`` scripts see it; whatever the command wrote to
    its ``--out`` folder is complete.
    """
    try:
        try:
            return _main(argv)
        finally:
            write_stdout("")  # flush here, not at exit, so that a closed pipe is caught below
            if argv is None:  # the process's command (not a call from Python): it has ended and said how
                interrupt.ignore_from_now_on()
    except StdoutClosed:
        # Python's recipe (signal module docs): what is still buffered goes to devnull at exit.
        try:
            fd = sys.stdout.fileno()
        except (OSError, ValueError):  # an in-memory stdout (tests, embedding): nothing is buffered for a file
            return 1
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
        return 1


def _main(argv: list[str] | None) -> int:
    """Parse ``argv`` and run its command; its errors become messages and exit statuses. Ctrl-C at any
    moment, also while the command's modules are still being imported, ends it with status 130 and
    one line, never a traceback."""
    raw = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in raw if not a.startswith("-")), None)  # top-level options are flags only
    held_before = folder_lock.held()  # an audit's own folder, while it runs a stage in-process
    interrupted = False
    try:
        with interrupt.catching_ctrl_c():
            code = _parse_and_run(argv, raw, command)
            # a Ctrl-C whose KeyboardInterrupt Python swallowed (raised in a garbage-collection callback)
            # after the work's last check: the command was interrupted all the same
            interrupted = interrupt.pending()
        if not interrupted:
            return code
    except KeyboardInterrupt as exc:
        if isinstance(exc, StageInterrupted):  # a stage's interruption was said by the stage: the audit's JSON here
            return _interrupted_status(raw, command, exc.status)
    finally:
        folder_lock.release(keep=held_before)  # the --out folders this command locked
    name = f"diffaudit {speaking_as(command)}" if command in COMMANDS else "diffaudit"
    by = signal.Signals(interrupt.stopped_with() - 128)
    what = "interrupted" if by == signal.SIGINT else f"stopped by {by.name}"
    print(f"{name}: {what}; finished work is kept, re-run to continue", file=sys.stderr)
    return _interrupted_status(raw, command)


def _interrupted_status(raw: list[str], command: str | None, status: int | None = None) -> int:
    """The exit status of an interrupted command, 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM);
    with --json, the interruption as JSON on stdout like every other ending (``{"command", "error":
    "interrupted", "signal", "exit_status"}``): a script reading stdout gets JSON either way. Said by the
    command the user ran, not by an audit's stage running in-process. ``status``: the one a stage ended with
    (:class:`~diffaudit.cli.common.StageInterrupted`), else this command's."""
    status = interrupt.stopped_with() if status is None else status
    options = raw[:raw.index("--")] if "--" in raw else raw
    if "--json" not in options or current_stage() is not None:
        return status
    try:
        write_stdout(json.dumps({"command": command if command in COMMANDS else None, "error": "interrupted",
                                 "signal": signal.Signals(status - 128).name, "exit_status": status}, indent=2) + "\n")
    except (StdoutClosed, OSError):  # a reader gone with the Ctrl-C: nothing to tell
        pass
    return status


def _command_parser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser:
    """The sub-parser of ``command`` (``parser`` itself when there is none)."""
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        if command in getattr(action, "choices", {}):
            return action.choices[command]
    return parser


def _close_flags(parser: argparse.ArgumentParser, extra: list[str]) -> list[str]:
    """``parser``'s flags close to the unrecognised flags of ``extra`` (``--stpes``: ``--steps``), each once."""
    import difflib

    flags = [f for a in parser._actions for f in a.option_strings if f.startswith("--")]
    close = [m[0] for tok in extra if tok.startswith("--")
             if (m := difflib.get_close_matches(tok.split("=", 1)[0], flags, n=1, cutoff=0.75))]
    return list(dict.fromkeys(close))


def _did_you_mean(parser: argparse.ArgumentParser, extra: list[str]) -> str:
    """" (did you mean --steps?)" for the unrecognised flags of ``extra`` close to one of ``parser``'s."""
    close = _close_flags(parser, extra)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _command_hint(command: str | None, extra: list[str]) -> str:
    """"; HINT" for unrecognised flags a command module names in ``UNKNOWN_FLAG_HINTS`` ({flag prefix: why the
    command has no such flag and what does it}), "" otherwise."""
    if command not in COMMANDS:
        return ""
    hints = getattr(importlib.import_module(f"diffaudit.cli.{command.replace('-', '_')}"), "UNKNOWN_FLAG_HINTS", {})
    said = [hint for prefix, hint in hints.items() if any(e.startswith(prefix) for e in extra)]
    return "".join(f"; {hint}" for hint in said)


def _shell_expanded(raw: list[str], extra: list[str]) -> str:
    """" (the shell expanded ...)" when the unrecognised arguments are files that follow a flag's value that is
    a file too (``--data x-*.tar`` unquoted: the shell passed every match as its own argument, and the flag took
    the first); "" otherwise."""
    if not extra or not all(os.path.isfile(os.path.expanduser(e)) for e in extra) or extra[0] not in raw:
        return ""
    at = raw.index(extra[0])
    if at < 2 or not raw[at - 2].startswith("--") or not os.path.isfile(os.path.expanduser(raw[at - 1])):
        return ""
    flag, first = raw[at - 2], raw[at - 1]
    return (f" (the shell expanded a pattern into {len(extra) + 1} files after {flag}, which takes one: quote it, "
            f"e.g. {flag} 'shards-*.tar' or {flag} 'shards-{{000000..000004}}.tar', for diffaudit to expand; "
            f"{flag} took {first})")


def _parse_and_run(argv: list[str] | None, raw: list[str], command: str | None) -> int:
    parser = build_parser(only=command if command in COMMANDS else None, overview=command not in COMMANDS)
    missing = next((_UNAVAILABLE[a] for a in raw if a in _UNAVAILABLE), None)
    if missing:
        print(f"diffaudit: error: {missing}", file=sys.stderr)
        return 2
    options = raw[:raw.index("--")] if "--" in raw else raw
    token = _JSON_FOR.set((command if command in COMMANDS else None,) if "--json" in options else None)
    raw_token = _RAW.set(options)
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # said by the command's own parser: its usage and name, not the top level's
            own = _command_parser(parser, getattr(args, "command", None))
            own.error(f"unrecognized arguments: {' '.join(extra)}{_did_you_mean(own, extra)}{_shell_expanded(options, extra)}"
                      f"{_command_hint(getattr(args, 'command', None), extra)}")
    finally:
        _JSON_FOR.reset(token)
        _RAW.reset(raw_token)
    args._argv = list(sys.argv[1:] if argv is None else argv)  # which flags were given (audit --config)
    if not getattr(args, "_run", None):
        if args.json:  # a refusal, which --json answers as JSON on stdout like every other one
            print("diffaudit: error: no command given (`diffaudit --help` lists them)", file=sys.stderr)
            write_stdout(json.dumps({"command": None, "error": "no command given", "exit_status": 2}, indent=2) + "\n")
            return 2
        parser.print_help()
        return 2
    previous = os.environ.get("DIFFAUDIT_QUIET")
    set_quiet(args.quiet or args.json)
    try:
        try:
            return int(args._run(args) or 0)
        except PermissionError as exc:  # a file or folder another user owns (where no reader said it before)
            from diffaudit.core.io import permission_denied

            raise permission_denied(exc.filename if exc.filename is not None else "a file it needs") from None
    except DiffauditError as exc:
        from diffaudit.core.progress import printable  # names from data never drive the terminal

        message = naming_the_option(str(exc), args, option_flags(_command_parser(parser, args.command)))
        print(f"diffaudit {speaking_as(args.command)}: error: {printable(message)}", file=sys.stderr)
        if (stage := current_stage()) is not None:  # the audit that runs this command records why its stage stopped
            stage.error = message
        if args.json and speaking_as(args.command) == args.command:  # a script reading stdout gets JSON either way
            fields = exc.json_fields() if isinstance(exc, StageFailedError) else {}
            write_stdout(json.dumps({"command": args.command, "error": message, "exit_status": 2, **fields}, indent=2) + "\n")
        return 2
    except Exception as exc:  # a failure no check foresaw: its traceback on stderr, status 1, and JSON as for any ending
        if args.json and speaking_as(args.command) == args.command:
            said = (str(exc).splitlines() or [""])[0]
            try:
                write_stdout(json.dumps({"command": args.command, "error": f"unexpected error: {type(exc).__name__}: "
                                         f"{said}", "exit_status": 1}, indent=2) + "\n")
            except (StdoutClosed, OSError):  # a reader gone: the traceback still says what happened
                pass
        raise
    finally:
        if previous is None:
            os.environ.pop("DIFFAUDIT_QUIET", None)
        else:
            os.environ["DIFFAUDIT_QUIET"] = previous


def option_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The ``--flag`` of each of ``parser``'s options whose value may name a path, by destination: positional
    arguments have none, and an option with choices takes a name (``--embedder clip``, whose value leads the
    message "clip embedder: ..." without being what it is about)."""
    return {a.dest: flags[0] for a in parser._actions
            if not a.choices and (flags := [f for f in a.option_strings if f.startswith("--")])}


def naming_the_option(message: str, args: argparse.Namespace, flags: dict[str, str]) -> str:
    """``message`` led by the option (``flags``: :func:`option_flags`) that gave the path it starts
    with: a refusal from below the CLI (the loader's "nope.npz does not exist") names the file, not
    which of the command's options named it (``--data nope.npz does not exist``). Unchanged when it
    names no option's value first, when two options hold that value, or when it names an option already."""
    if message.startswith("-"):
        return message
    given = [flags[dest] for dest, value in vars(args).items()
             if dest in flags and isinstance(value, str) and len(value) > 1
             and message.startswith(value) and message[len(value):len(value) + 1] in (" ", ":")]
    return f"{given[0]} {message}" if len(given) == 1 else message


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
