"""The shell completion scripts `python -m cdisk.cli.completions SHELL` generates: each runs through its shell,
completes what `cdisk X --help` shows, and completes subcommands, switches, choices and paths for real."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from plumbum import cli

from cdisk.cli import completions
from tests.docs import COMMANDS, help_switches
from tests.helpers import tool_or_skip, tools_required


def generated(shell: str) -> str:
    result = subprocess.run([sys.executable, "-m", "cdisk.cli.completions", shell], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0 and not result.stderr, result.stderr
    return result.stdout


def test_usage_error_without_a_known_shell() -> None:
    result = subprocess.run([sys.executable, "-m", "cdisk.cli.completions", "tcsh"], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "usage: python -m cdisk.cli.completions bash|zsh|fish\n"


def test_a_switch_is_classified_by_its_definition() -> None:
    class App(cli.Application):
        engine = cli.SwitchAttr(["--engine"], cli.Set("auto", "podman"), default="auto", help="Whose store. More.")
        tmpdir = cli.SwitchAttr(["--tmpdir"], cli.ExistingDirectory, default=None)
        overlay = cli.SwitchAttr(["--overlay"], str, default=None)
        platform = cli.SwitchAttr(["--platform"], str, list=True, help="OS/ARCH, e.g. linux/arm64")
        force = cli.Flag(["-f", "--force"])
        verbose = cli.Flag(["-v", "--verbose"])  # takes -v from plumbum's --version

        def main(self, image: str, target: str) -> None:
            """Not run."""

    command = completions.command_of(App, "x", "cdisk x")
    by_name = {s.names[-1]: s for s in command.switches}
    assert by_name["--engine"].value == "choice" and by_name["--engine"].choices == ("auto", "podman")
    assert by_name["--engine"].help == "Whose store"
    assert by_name["--tmpdir"].value == "directory"
    assert by_name["--overlay"].value == "file"  # a host path, though its type is str
    assert by_name["--platform"].value == "text" and by_name["--platform"].repeatable
    assert by_name["--platform"].help == "OS/ARCH, e.g. linux/arm64"
    assert (by_name["--force"].names, by_name["--force"].value) == (("-f", "--force"), "")
    assert by_name["--verbose"].names == ("-v", "--verbose") and by_name["--version"].names == ("--version",)
    assert command.arguments == 2


@pytest.mark.parametrize("shell", completions.SHELLS)
def test_every_switch_the_help_shows_is_completed(shell: str) -> None:
    script = generated(shell)
    missing = []
    for command in ("", *COMMANDS):
        for name in help_switches(command):
            spelled = {"fish": f"-l {name[2:]}" if name.startswith("--") else f"-s {name[1:]}"}.get(shell, name)
            if spelled not in script:
                missing.append(f"{command or 'cdisk'} {name}")
    assert not missing, f"the {shell} completion lacks {', '.join(missing)}"


def _bash_completes(script: Path, *words: str) -> list[str]:
    """What the bash completion offers for the command line `words` (the last is the word being completed)."""
    program = (f'source "{script}"; COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); _cdisk; '
               'printf "%s\\n" "${COMPREPLY[@]}"')
    result = subprocess.run(["bash", "-c", program, "bash", *words], capture_output=True, text=True, check=True)
    return result.stdout.split()


def test_bash_completes_subcommands_switches_choices_and_paths(tmp_path: Path) -> None:
    script = tmp_path / "cdisk"
    script.write_text(generated("bash"))
    subprocess.run(["bash", "-n", str(script)], check=True)
    (tmp_path / "disk.qcow2").touch()
    (tmp_path / "dir").mkdir()
    assert _bash_completes(script, "cdisk", "con") == ["convert"]
    assert _bash_completes(script, "cdisk", "convert", "--eng") == ["--engine"]
    assert _bash_completes(script, "cdisk", "convert", "--engine", "") == ["auto", "podman", "docker"]
    assert _bash_completes(script, "cdisk", "refresh", "--pull", "=", "ne") == ["never", "newer"]
    assert _bash_completes(script, "cdisk", "convert", "-O", "v") == ["vmdk", "vhdx", "vpc", "vdi"]
    assert _bash_completes(script, "cdisk", "serve", "--socket-m") == ["--socket-mode"]
    assert _bash_completes(script, "cdisk", "convert", "IMAGE", f"{tmp_path}/di") == [f"{tmp_path}/dir",
                                                                                       f"{tmp_path}/disk.qcow2"]
    assert _bash_completes(script, "cdisk", "ls", "--tmpdir", f"{tmp_path}/di") == [f"{tmp_path}/dir"]
    assert _bash_completes(script, "cdisk", "convert", "--platform", "") == []


def test_bash_completion_loads_from_where_setup_installs_it(tmp_path: Path) -> None:
    loader = Path("/usr/share/bash-completion/bash_completion")
    if not loader.exists():
        if tools_required():
            pytest.fail("bash-completion is not installed: scripts/setup installs it with CDISK_SETUP_TEST=1")
        pytest.skip("bash-completion not installed")
    directory = tmp_path / "bash-completion" / "completions"
    directory.mkdir(parents=True)
    (directory / "cdisk").write_text(generated("bash"))
    # as for a user: ${XDG_DATA_HOME}/bash-completion/completions (root's /usr/local/share is one of XDG_DATA_DIRS)
    program = f'source {loader}; __load_completion cdisk && complete -p cdisk'
    result = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=False,
                            env={"PATH": "/usr/bin:/bin", "XDG_DATA_HOME": str(tmp_path), "HOME": str(tmp_path)})
    assert result.stdout.strip() == "complete -o filenames -F _cdisk cdisk", result.stderr


def test_zsh_script_parses_and_registers_for_cdisk(tmp_path: Path) -> None:
    zsh = tool_or_skip("zsh")
    (tmp_path / "_cdisk").write_text(generated("zsh"))
    subprocess.run([zsh, "-n", str(tmp_path / "_cdisk")], check=True)
    program = (f"fpath=({tmp_path} $fpath); autoload -Uz compinit; compinit -u -d {tmp_path}/dump; "
               "print -r -- $_comps[cdisk]; print -rl -- $fpath")
    result = subprocess.run([zsh, "-f", "-c", program], capture_output=True, text=True, check=True)
    lines = result.stdout.splitlines()
    assert lines[0] == "_cdisk"
    assert "/usr/local/share/zsh/site-functions" in lines  # where setup installs it as root: on zsh's own fpath


def _fish_completes(fish: str, script: Path, line: str) -> list[str]:
    result = subprocess.run([fish, "--no-config", "-c", f"source {script}; complete -C '{line}'"],
                            capture_output=True, text=True, check=True)
    return [entry.split("\t")[0] for entry in result.stdout.splitlines()]


def test_fish_completes_subcommands_switches_choices_and_paths(tmp_path: Path) -> None:
    fish = tool_or_skip("fish")
    script = tmp_path / "cdisk.fish"
    script.write_text(generated("fish"))
    subprocess.run([fish, "--no-execute", str(script)], check=True)
    (tmp_path / "disk.qcow2").touch()
    assert _fish_completes(fish, script, "cdisk con") == ["convert"]
    assert sorted(_fish_completes(fish, script, "cdisk convert --engine ")) == ["auto", "docker", "podman"]
    assert _fish_completes(fish, script, "cdisk refresh --pull=ne") == ["--pull=never", "--pull=newer"]
    assert _fish_completes(fish, script, f"cdisk convert IMAGE {tmp_path}/dis") == [f"{tmp_path}/disk.qcow2"]
    assert _fish_completes(fish, script, "cdisk convert --platform ") == []
    result = subprocess.run([fish, "-c", "printf '%s\\n' $fish_complete_path"], capture_output=True, text=True,
                            check=True, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert "/etc/fish/completions" in result.stdout.splitlines()  # where setup installs it as root
