"""`python -m cdisk.cli.completions bash|zsh|fish`: cdisk's shell completion, generated from the commands' own
switch definitions (scripts/setup runs it and installs the script), so it cannot drift from them.

It completes the subcommands, each command's switches, the values of a switch with a fixed set of them
(`--engine auto|podman|docker`), directories and files for the switches that take a host path, and files for the
positional arguments. Nothing is looked up at completion time: no engine is asked, no Python is started.
"""

from __future__ import annotations

import inspect
import re
import sys
from dataclasses import dataclass

from plumbum import cli

# Switches whose value is a path on the host, where plumbum's type (str) does not say so. `--path` is a path in
# the image, not on the host: it completes nothing.
HOST_FILES = frozenset({"--output", "--overlay", "--pid-file", "--socket", "--stop"})
_DIRECTORY_TYPES = (cli.ExistingDirectory,)
_FILE_TYPES = (cli.ExistingFile, cli.NonexistentPath)
SHELLS = ("bash", "zsh", "fish")


@dataclass(frozen=True)
class Switch:
    """One switch as a shell completes it.

    `value` is what its argument is: "" (a flag: none), "choice" (one of `choices`), "directory", "file" or "text"
    (anything: nothing to offer).
    """

    names: tuple[str, ...]
    value: str
    choices: tuple[str, ...]
    help: str
    repeatable: bool

    @property
    def long(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if n.startswith("--"))

    @property
    def short(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if not n.startswith("--"))


@dataclass(frozen=True)
class Command:
    """A command (`name` "" for cdisk itself): its switches, and how many positional arguments it takes."""

    name: str
    help: str
    switches: tuple[Switch, ...]
    arguments: int


def _first_sentence(text: str | None) -> str:
    text = " ".join((text or "").split())
    end = re.search(r"\.\s+(?=[A-Z])", text)  # a sentence ends before a capital: "e.g. u1.medium" goes on
    text = text[:end.start()] if end else text.rstrip(".")
    return text if len(text) <= 90 else text[:89].rstrip() + "…"


def _switch(info: object, live: list[str]) -> Switch:
    names = tuple(sorted((f"-{n}" if len(n) == 1 else f"--{n}" for n in live), key=lambda n: (n.startswith("--"), n)))
    argtype = getattr(info, "argtype", None)
    choices: tuple[str, ...] = ()
    if argtype is None:
        value = ""
    elif isinstance(argtype, cli.Set):
        value, choices = "choice", tuple(str(v) for v in argtype.values if isinstance(v, str))
    elif "--output-format" in names:  # a string to plumbum, so that core words a refusal (luks, qcow) by name
        from cdisk.core.qemu.output_formats import FORMATS

        value, choices = "choice", tuple(FORMATS)
    elif argtype in _DIRECTORY_TYPES:
        value = "directory"
    elif argtype in _FILE_TYPES or set(names) & HOST_FILES:
        value = "file"
    else:
        value = "text"
    return Switch(names, value, choices, _first_sentence(getattr(info, "help", "")),
                  bool(getattr(info, "list", False)))


def command_of(app_class: type[cli.Application], name: str, program: str) -> Command:
    """The completion view of one plumbum application: every switch it defines (its meta-switches included)."""
    app = app_class(program)
    # A name a subclass took over (`-v`: --verbose, not plumbum's --version) maps to its new switch only.
    by_name: dict[str, object] = getattr(app, "_switches_by_name", {})
    live: dict[int, tuple[object, list[str]]] = {}
    for switch_name, info in by_name.items():
        live.setdefault(id(info), (info, []))[1].append(switch_name)
    switches = sorted((_switch(info, names) for info, names in live.values()), key=lambda s: s.names[-1])
    parameters = list(inspect.signature(app_class.main).parameters.values())[1:]
    arguments = -1 if any(p.kind is p.VAR_POSITIONAL for p in parameters) else len(parameters)
    return Command(name, _first_sentence(app_class.__doc__ or app_class.DESCRIPTION), tuple(switches), arguments)


def commands() -> list[Command]:
    """cdisk itself, then each of its subcommands, in the order `cdisk --help` lists them."""
    from cdisk.cli.top import CDisk

    app = CDisk("cdisk")
    subcommands: dict[str, object] = getattr(app, "_subcommands", {})
    top = command_of(CDisk, "", "cdisk")
    return [top, *(command_of(sub.get(), name, f"cdisk {name}")  # type: ignore[attr-defined]
                   for name, sub in sorted(subcommands.items()))]


# --- bash ------------------------------------------------------------------------------------------------------


def _words(items: object) -> str:
    return " ".join(str(i) for i in items)  # type: ignore[attr-defined]


def bash(all_commands: list[Command]) -> str:
    """A bash completion script (for bash-completion's lazy loading, or to source): needs nothing but bash."""
    top, subs = all_commands[0], all_commands[1:]
    lines = [
        "# bash completion for cdisk; generated by `python -m cdisk.cli.completions bash` from cdisk's switch",
        "# definitions (scripts/setup installs it). Edit cli/completions.py, not this file.",
        "_cdisk() {",
        '    local cur=${COMP_WORDS[COMP_CWORD]} prev=""',
        '    (( COMP_CWORD > 0 )) && prev=${COMP_WORDS[COMP_CWORD-1]}',
        '    # --switch=VALUE: bash splits at "=" (COMP_WORDBREAKS)',
        '    if [[ $cur == "=" ]]; then prev=${COMP_WORDS[COMP_CWORD-1]}; cur=""',
        '    elif [[ $prev == "=" ]] && (( COMP_CWORD > 1 )); then prev=${COMP_WORDS[COMP_CWORD-2]}; fi',
        '    local command="" i word skip=""',
        "    for (( i = 1; i < COMP_CWORD; i++ )); do",
        "        word=${COMP_WORDS[i]}",
        '        if [[ -n $skip ]]; then skip=""; continue; fi',
        "        case $word in",
    ]
    top_values = [n for s in top.switches if s.value for n in s.names]
    if top_values:
        lines.append(f"            {'|'.join(top_values)}) skip=1 ;;")
    lines += [
        f"            {'|'.join(c.name for c in subs)}) command=$word; break ;;",
        "        esac",
        "    done",
        '    local switches="" subcommands=""',
        "    case $command in",
    ]
    for command in all_commands:
        label = command.name or '""'
        lines.append(f"        {label})")
        lines.append(f'            switches="{_words(n for s in command.switches for n in s.names)}"')
        if not command.name:
            lines.append(f'            subcommands="{_words(c.name for c in subs)}"')
        cases = _bash_value_cases(command)
        if cases:
            lines.append('            case $prev in')
            lines += [f"                {case}" for case in cases]
            lines.append("            esac")
        lines.append("            ;;")
    lines += [
        "    esac",
        "    if [[ $cur == -* ]]; then",
        '        COMPREPLY=($(compgen -W "$switches" -- "$cur"))',
        '    elif [[ -n $subcommands ]]; then',
        '        COMPREPLY=($(compgen -W "$subcommands" -- "$cur"))',
        "    else",
        '        COMPREPLY=($(compgen -f -- "$cur"))',
        "    fi",
        "}",
        "complete -o filenames -F _cdisk cdisk",
        "",
    ]
    return "\n".join(lines)


def _bash_value_cases(command: Command) -> list[str]:
    cases = []
    for s in command.switches:
        pattern = "|".join(s.names)
        if s.value == "choice":
            cases.append(f'{pattern}) COMPREPLY=($(compgen -W "{_words(s.choices)}" -- "$cur")); return ;;')
        elif s.value == "directory":
            cases.append(f'{pattern}) COMPREPLY=($(compgen -d -- "$cur")); return ;;')
        elif s.value == "file":
            cases.append(f'{pattern}) COMPREPLY=($(compgen -f -- "$cur")); return ;;')
        elif s.value == "text":
            cases.append(f"{pattern}) COMPREPLY=(); return ;;")
    return cases


# --- zsh -------------------------------------------------------------------------------------------------------


def _zsh_quoted(text: str) -> str:
    """`text` inside a single-quoted word of the script, as an _arguments explanation or a _describe description:
    no quote, no bracket (which would end the explanation), no backslash."""
    return text.replace("'", "’").replace("[", "(").replace("]", ")").replace("\\", "/")


def _zsh_spec(s: Switch) -> list[str]:
    description = f"[{_zsh_quoted(s.help)}]"
    if s.value == "choice":
        action = f":{s.long[0][2:] if s.long else 'value'}:({' '.join(s.choices)})"
    elif s.value == "directory":
        action = ":directory:_files -/"
    elif s.value == "file":
        action = ":file:_files"
    elif s.value == "text":
        action = f":{s.long[0][2:] if s.long else 'value'}: "
    else:
        action = ""
    exclusive = "*" if s.repeatable else f"({' '.join(s.names)})"
    specs = []
    for name in s.names:
        suffix = "" if not s.value else ("=" if name.startswith("--") else "+")
        specs.append(f"'{exclusive}{name}{suffix}{description}{action}'")
    return specs


def zsh(all_commands: list[Command]) -> str:
    """A zsh completion function (`_cdisk`, autoloaded from a directory of `fpath`)."""
    top, subs = all_commands[0], all_commands[1:]
    lines = [
        "#compdef cdisk",
        "# zsh completion for cdisk; generated by `python -m cdisk.cli.completions zsh` from cdisk's switch",
        "# definitions (scripts/setup installs it). Edit cli/completions.py, not this file.",
        "",
        "_cdisk() {",
        "    local curcontext=$curcontext state line",
        "    typeset -A opt_args",
        "    local -a subcommands",
        "    subcommands=(",
        *(f"        '{c.name}:{_zsh_quoted(c.help)}'" for c in subs),
        "    )",
        "    _arguments -C \\",
        *(f"        {spec} \\" for s in top.switches for spec in _zsh_spec(s)),
        "        '1:command:->command' \\",
        "        '*::argument:->argument'",
        "    case $state in",
        "        command) _describe -t commands 'cdisk command' subcommands ;;",
        "        argument)",
        "            case $line[1] in",
    ]
    for command in subs:
        lines.append(f"                {command.name}) _arguments \\")
        lines += [f"                    {spec} \\" for s in command.switches for spec in _zsh_spec(s)]
        lines.append("                    '*:file:_files' ;;")
    lines += [
        "            esac ;;",
        "    esac",
        "}",
        "",
        '_cdisk "$@"',
        "",
    ]
    return "\n".join(lines)


# --- fish ------------------------------------------------------------------------------------------------------


def _fish_quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def fish(all_commands: list[Command]) -> str:
    """A fish completion script (`cdisk.fish` in a directory of `fish_complete_path`)."""
    subs = all_commands[1:]
    lines = [
        "# fish completion for cdisk; generated by `python -m cdisk.cli.completions fish` from cdisk's switch",
        "# definitions (scripts/setup installs it). Edit cli/completions.py, not this file.",
        "complete -c cdisk -f",
    ]
    for command in subs:
        lines.append(f"complete -c cdisk -n __fish_use_subcommand -a {command.name} -d {_fish_quoted(command.help)}")
    for command in all_commands:
        condition = ("__fish_use_subcommand" if not command.name
                     else _fish_quoted(f"__fish_seen_subcommand_from {command.name}"))
        if command.name and command.arguments:
            lines.append(f"complete -c cdisk -n {condition} -F")
        for s in command.switches:
            names = [f"-s {n[1:]}" for n in s.short] + [f"-l {n[2:]}" for n in s.long]
            if s.value == "choice":
                value = f"-x -a {_fish_quoted(' '.join(s.choices))}"
            elif s.value == "directory":
                value = "-x -a '(__fish_complete_directories)'"
            elif s.value == "file":
                value = "-r -F"
            elif s.value == "text":
                value = "-x"
            else:
                value = ""
            lines.append(" ".join(filter(None, ["complete -c cdisk -n", condition, *names, value, "-d",
                                                _fish_quoted(s.help)])))
    lines.append("")
    return "\n".join(lines)


def script(shell: str) -> str:
    """The completion script for `shell` (one of SHELLS)."""
    return {"bash": bash, "zsh": zsh, "fish": fish}[shell](commands())


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in SHELLS:
        print(f"usage: python -m cdisk.cli.completions {'|'.join(SHELLS)}", file=sys.stderr)
        return 2
    sys.stdout.write(script(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
