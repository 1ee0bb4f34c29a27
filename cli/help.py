"""What the command line says of itself: each command's help, and a usage error as one line.

plumbum parses the switches; `Command`, the base of every cdisk command, renders the help (a usage line, the
switches sorted, each line starting with its names and metavar, as man pages and completions read them) and
turns each of plumbum's usage errors into a `UsageError` (exit 2): one `cdisk: error: WHAT; WHAT TO DO` line on
stderr instead of plumbum's help dump on stdout. plumbum's messages are translated by the locale, so none is
shown: each error is told from what plumbum parsed (the switch, the value, the arguments).

plumbum has no public hook for its errors: `Command` overrides `_parse_args`, `_validate_args` and
`_handle_argument`, which plumbum 1.8 to 2.0 call alike; tests/unit/cli/test_help.py pins each error's line.
"""

from __future__ import annotations

import inspect
import re
import shutil
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn

from plumbum import cli
from plumbum.cli.switches import (
    MissingArgument,
    MissingMandatorySwitch,
    PositionalArgumentsError,
    SwitchCombinationError,
    SwitchError,
    SwitchInfo,
    UnknownSwitch,
)

from cdisk.core.errors import BadValue, UsageError

# A switch plumbum handles itself: the help, version and completion requests it raises as errors.
_META_NAMES = ("ShowHelp", "ShowHelpAll", "ShowVersion", "ShowCompletion")
# Help lines are wrapped to the terminal, within these bounds (a pipe gets the lower one's neighbour, 80).
MIN_WIDTH, MAX_WIDTH = 60, 100
# The widest switch heading that keeps its text on the same line.
HEADING_COLUMN = 34
_SWITCH_IN_TEXT = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")
_NBSP = "\u00a0"


def _shown(name: str) -> str:
    """A plumbum switch name as typed: `O` → `-O`, `output-format` → `--output-format`."""
    return ("-" if len(name) == 1 else "--") + name


@dataclass(frozen=True)
class SwitchDoc:
    """One switch of a command, as its help shows it: `-O, --output-format FORMAT  Format of TARGET…`."""

    names: tuple[str, ...]
    metavar: str
    text: str

    @property
    def heading(self) -> str:
        """The names then the metavar; a switch with no short name is indented as if it had one."""
        lead = ", ".join(self.names)
        if not any(len(name) == 2 for name in self.names):
            lead = "    " + lead
        return f"{lead} {self.metavar}" if self.metavar else lead

    @property
    def sort_key(self) -> str:
        longs = [name for name in self.names if name.startswith("--")]
        return (longs or list(self.names))[0].lstrip("-").lower()


# plumbum's argname when a switch names none ("VALUE", or its translation).
_NO_ARGNAME = inspect.signature(cli.SwitchAttr.__init__).parameters["argname"].default


def metavar(info: SwitchInfo) -> str:
    """What a switch's value is called in its help: the choices of a `cli.Set` (`{auto,podman,docker}`),
    else its `argname` (`DIR`), else the last word of its long name (`--output-format` → `FORMAT`); a flag has
    none."""
    if info.argtype is None:
        return ""
    values = getattr(info.argtype, "values", None)
    if isinstance(info.argtype, cli.Set) and values and all(isinstance(v, str) for v in values):
        return "{" + ",".join(values) + "}"
    if info.argname and info.argname != _NO_ARGNAME:
        return str(info.argname)
    return max(info.names, key=len).rsplit("-", 1)[-1].upper()


def _without_plumbums_default(info: SwitchInfo) -> str:
    """A switch's help without the `; the default is 384` plumbum appends (in the locale's words, the value as
    Python prints it): the text says its default as an operator writes it (`0600`), or gets `(default: raw)`."""
    text = " ".join((info.help or "").split())
    default = getattr(info.func, "_default_value", None)
    if not default or isinstance(default, list):
        return text
    text = re.sub(rf";[^;]*{re.escape(str(default))}$", "", text)
    return text if "default" in text else f"{text} (default: {default})"


def switch_docs(app: cli.Application) -> list[SwitchDoc]:
    """Every switch `app` takes, once each with the names that are its own, sorted by long name.

    A switch a subclass overrode (refresh's --pull) or unbound is not listed: only names that still lead to it.
    """
    names: dict[int, list[str]] = {}
    infos: dict[int, SwitchInfo] = {}
    for name, info in app._switches_by_name.items():
        names.setdefault(id(info), []).append(name)
        infos[id(info)] = info
    docs = []
    for key, info in infos.items():
        ordered = sorted(names[key], key=lambda n: (len(n) > 1, info.names.index(n) if n in info.names else 0))
        text = _without_plumbums_default(info)
        notes = []
        if info.list and "repeatable" not in text:
            notes.append("repeatable")
        notes += [f"with {_shown(n)}" for n in info.requires]
        notes += [f"not with {_shown(n)}" for n in info.excludes]
        if notes:
            text += f" ({'; '.join(notes)})"
        docs.append(SwitchDoc(tuple(_shown(n) for n in ordered), metavar(info), text))
    return sorted(docs, key=lambda doc: doc.sort_key)


def arguments(app: cli.Application) -> tuple[str, ...]:
    """The argument lines of `app`'s usage: its SYNOPSIS, else its main()'s parameters (IMAGE TARGET)."""
    synopsis: tuple[str, ...] = getattr(app, "SYNOPSIS", ())
    if synopsis:
        return synopsis
    words = []
    for param in list(inspect.signature(type(app).main).parameters.values())[1:]:
        name = param.name.upper().replace("_", "-")
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            words.append(f"[{name}…]")
        elif param.default is not inspect.Parameter.empty:
            words.append(f"[{name}]")
        else:
            words.append(name)
    return (" ".join(words),)


def usage_lines(app: cli.Application) -> list[str]:
    """`cdisk convert [SWITCHES] IMAGE TARGET`, one line per form of the command."""
    return [f"{app.PROGNAME} {form}" if form.startswith("-") else f"{app.PROGNAME} [SWITCHES] {form}".rstrip()
            for form in arguments(app)]


def _wrapped(text: str, width: int) -> list[str]:
    """`text` in lines of at most `width`, none of which starts with a dash (a line starting with `-` or
    `--` is a switch's line, to a man page test and to a reader)."""
    glued = re.sub(r" (?=-)", _NBSP, text)  # textwrap breaks only at ASCII white space
    lines = textwrap.wrap(glued, width=max(width, 20), break_on_hyphens=False, break_long_words=False)
    return [line.replace(_NBSP, " ") for line in lines] or [""]


def help_width() -> int:
    return max(MIN_WIDTH, min(MAX_WIDTH, shutil.get_terminal_size((80, 24)).columns))


def help_text(app: cli.Application, width: int | None = None) -> str:
    """The help of `app`: usage, what it does, its commands (the top level), its switches."""
    width = width or help_width()
    lines = []
    for n, usage in enumerate(usage_lines(app)):
        lines.append(("Usage: " if n == 0 else "       ") + usage)
    description = " ".join((app.DESCRIPTION or "").split())
    if description:
        lines += ["", *_wrapped(description, width)]
    summaries: Mapping[str, str] = getattr(app, "COMMAND_SUMMARIES", {})
    if summaries:
        column = max(map(len, summaries)) + 4
        lines += ["", "Commands:"]
        for name, summary in summaries.items():
            body = _wrapped(summary, width - column)
            lines.append(f"  {name:<{column - 2}}{body[0]}")
            lines += [" " * column + more for more in body[1:]]
    docs = switch_docs(app)
    lines += ["", "Switches:"]
    column = min(max(len(doc.heading) for doc in docs) + 4, HEADING_COLUMN)
    for doc in docs:
        body = _wrapped(doc.text, width - column)
        head = f"  {doc.heading}"
        if len(head) + 2 > column:
            lines.append(head)
            lines += [" " * column + line for line in body]
        else:
            lines.append(f"{head:<{column}}{body[0]}")
            lines += [" " * column + line for line in body[1:]]
    footer: str = getattr(app, "HELP_FOOTER", "")
    if footer:
        lines += ["", *_wrapped(footer, width)]
    return "\n".join(lines)


def _what_is_wanted(argtype: Any, why: str) -> str:
    """Why a value was refused, in cdisk's words where plumbum's would be in the locale's."""
    values = getattr(argtype, "values", None)
    if isinstance(argtype, cli.Set) and values:
        return "not one of " + ", ".join(str(v) for v in values)
    if isinstance(argtype, cli.Range):
        return f"not a number from {argtype.start} to {argtype.end}"
    if argtype is cli.ExistingDirectory:
        return "not an existing directory"
    if argtype is int:
        return "not a whole number"
    return why.splitlines()[0] if why else "not a valid value"


def _takes(app: Any, switch: str) -> bool:
    """Whether the application `app` has the switch `switch` (-q, --json)."""
    return switch.lstrip("-") in getattr(app, "_switches_by_name", {})


def _format_after_force(swfuncs: Any, tailargs: Sequence[str]) -> str | None:
    """`-f qcow2` where a qemu-img user typed qemu-img's -f FMT: cdisk's -f (--force) was given and an argument
    is a format's name. Told with the error of the argument it left over."""
    if not any(parsed.swname in ("-f", "--force") for parsed in swfuncs.values()):
        return None
    from cdisk.core.qemu.output_formats import is_format_name

    named = [word for word in tailargs if is_format_name(word)]
    return f"-f {named[0]}" if named else None


class Command(cli.Application):
    """The base of every cdisk command: cdisk's help, and usage errors as `UsageError`s."""

    # The argument lines of the usage (default: main()'s parameters), e.g. ("IMAGE", "--stop SOCKET").
    SYNOPSIS: ClassVar[tuple[str, ...]] = ()
    # The top level's commands and a line on each, for its help (no subcommand is imported to tell them).
    COMMAND_SUMMARIES: ClassVar[Mapping[str, str]] = {}
    HELP_FOOTER: ClassVar[str] = ""
    # A switch that takes a value but may stand alone, as podman's booleans do: `--tls-verify` is
    # `--tls-verify=true`. The value may follow as `=VALUE`, or as the next word if it is one of these.
    BARE_VALUES: ClassVar[Mapping[str, tuple[str, tuple[str, ...]]]] = {"tls-verify": ("true", ("true", "false"))}

    @cli.switch(["-h", "--help"], overridable=True, group="Meta-switches", help="Show this help and exit")
    def help(self) -> None:
        print(help_text(self), flush=True)

    def see_help(self) -> str:
        return f"see `{self.PROGNAME} --help`"

    def usage_error(self, what: str, hint: str = "") -> NoReturn:
        """Stop with `what` and what to do: `hint`, else the help to read."""
        raise UsageError(f"{what}; {hint or self.see_help()}")

    # --- plumbum's parsing, its errors told as cdisk's ------------------------------------------------------

    def normalised(self, argv: Sequence[str]) -> list[str]:
        """`argv` with each bare switch of BARE_VALUES given its value (`--tls-verify` → `--tls-verify=true`);
        a flag given a value (`--quiet=1`) is refused here, the same under every plumbum.

        Only this command's own switches are looked at: the words a switch takes as its value, everything
        after `--` and everything from a subcommand's name on are left as they are.
        """
        words = list(argv)
        i = 0
        while i < len(words):
            word = words[i]
            if word == "--" or word in self._subcommands:
                break
            if word.startswith("--") and "=" in word:
                info = self._switches_by_name.get(word[2:word.index("=")])
                if info is not None and info.argtype is None:  # plumbum 1.8 would take `=VALUE` as an argument
                    self.usage_error(f"{word[:word.index('=')]} takes no value")
            elif word.startswith("--"):
                name = word[2:]
                info = self._switches_by_name.get(name)
                bare = self.BARE_VALUES.get(name)
                if info is not None and info.argtype is not None and bare is not None:
                    following = words[i + 1] if i + 1 < len(words) else None
                    if following not in bare[1]:
                        words[i] = f"{word}={bare[0]}"
                elif info is not None and info.argtype is not None:
                    i += 1  # its value, whatever it looks like
            elif word.startswith("-") and len(word) == 2:
                info = self._switches_by_name.get(word[1])
                if info is not None and info.argtype is not None:
                    i += 1
            i += 1
        return words

    def _parse_args(self, argv: list[str]) -> tuple[dict[Callable[..., None], Any], list[str]]:
        given = self.normalised(argv)
        argv[:] = given  # plumbum reads the list it was given
        try:
            return super()._parse_args(argv)
        except BadValue as bad:
            self._bad_value(bad)
        except SwitchError as error:
            if type(error).__name__ in _META_NAMES:
                raise
            self._parse_error(error, given)

    def _validate_args(self, swfuncs: Any, tailargs: Any) -> Any:
        try:
            return super()._validate_args(swfuncs, tailargs)
        except BadValue as bad:
            self._bad_value(bad)
        except SwitchError as error:
            if type(error).__name__ in _META_NAMES:
                raise
            self._validation_error(error, swfuncs, list(tailargs))

    @staticmethod
    def _handle_argument(val: str, argtype: Any, name: str) -> Any:
        if argtype is None:
            return NotImplemented
        try:
            return argtype(val)
        except (TypeError, ValueError) as error:
            raise BadValue(name, val, _what_is_wanted(argtype, str(error))) from None

    def _bad_value(self, bad: BadValue) -> NoReturn:
        if bad.name in self._switches_by_name:
            what = f"{_shown(bad.name)} {bad.value!r}: {bad.wanted}"
        else:  # a positional argument
            what = f"{bad.name.upper()} {bad.value!r}: {bad.wanted}"
        self.usage_error(what)

    def _switch_named_in(self, error: SwitchError) -> str | None:
        found = _SWITCH_IN_TEXT.search(str(error))
        return found[1] if found else None

    def _parse_error(self, error: SwitchError, given: Sequence[str]) -> NoReturn:
        switch = self._switch_named_in(error)
        if switch is None:  # no switch named: plumbum's own words are all there is (first line only)
            self.usage_error(str(error).splitlines()[0] if str(error) else "the switches are wrong")
        if isinstance(error, UnknownSwitch):
            commands = getattr(self, "_subcommands", {})
            command = next((word for word in given if word in commands), None)
            if command is not None and _takes(commands[command].get()(f"cdisk {command}"), switch):
                # `cdisk -q convert …`: a command's switch before the command
                self.usage_error(f"unknown switch {switch} before the command",
                                 f"a command's switches go after it: cdisk {command} {switch} …")
            self.usage_error(f"unknown switch {switch}")
        if isinstance(error, MissingArgument):
            self.usage_error(f"{switch} needs a value")
        info = self._switches_by_name.get(switch.lstrip("-"))
        if info is not None and info.argtype is None and any(w.startswith(switch + "=") for w in given):
            self.usage_error(f"{switch} takes no value")
        self.usage_error(f"{switch} given twice", "give it once")

    def _validation_error(self, error: SwitchError, swfuncs: Any, tailargs: list[str]) -> NoReturn:
        if isinstance(error, PositionalArgumentsError):
            usage = "; ".join(usage_lines(self))
            wanted = arguments(self)[0].split()
            required = [w for w in wanted if not w.startswith("[")]
            if len(tailargs) < len(required):
                missing = " and ".join(required[len(tailargs):])
                self.usage_error(f"{missing} missing", f"usage: {usage}")
            extra = tailargs[len(wanted):] if len(tailargs) > len(wanted) else tailargs
            slip = _format_after_force(swfuncs, tailargs)
            if extra and slip:
                self.usage_error(f"too many arguments: {' '.join(map(repr, extra))}",
                                 f"cdisk's -f is --force, not qemu-img's -f FMT (the disk's own format is read from "
                                 f"the image; the output format is -O FMT): drop {slip}")
            self.usage_error(f"too many arguments: {' '.join(map(repr, extra))}" if extra else "wrong arguments",
                             f"usage: {usage}")
        given = {func: parsed.swname for func, parsed in swfuncs.items()}
        by_func = self._switches_by_func
        if isinstance(error, MissingMandatorySwitch):
            for func, info in by_func.items():
                if info.mandatory and func not in given:
                    self.usage_error(f"{_shown(info.names[-1])} is required")
        if isinstance(error, SwitchCombinationError):
            for func, swname in given.items():
                info = by_func[func]
                for name in info.requires:
                    if self._switches_by_name[name].func not in given:
                        self.usage_error(f"{swname} needs {_shown(name)}")
                for name in info.excludes:
                    other = self._switches_by_name[name].func
                    if other in given:
                        self.usage_error(f"{swname} and {given[other]} exclude each other", "give one of them")
        self.usage_error(str(error).splitlines()[0] if str(error) else "the switches are wrong")


# plumbum's meta-switches but --help: --help-all repeats every command's help (the man pages hold that),
# and --completions is plumbum 2's alone (cdisk.cli.completions writes cdisk's).
Command.unbind_switches("--help-all", "--completions")
