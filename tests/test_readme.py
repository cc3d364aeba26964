"""The README's `featcache ...` commands exist as written: every subcommand, every --option (also those named in a
command's trailing comment), flags given no value, and as many positional arguments as the command takes (fenced
```bash blocks; inline `featcache ...` spans of the prose get the same checks except the argument count, as prose
may name a command without its arguments).

Running them would take minutes to hours (they are full-size examples); checking them against the CLI's command tree
(``typer.main.get_command(featcache.cli.app)``) is what keeps the README honest as the CLI changes.

Placeholders: ``[...]`` marks optional parts (the brackets are dropped and what is inside is checked like the rest);
``a|b`` alternatives are one option value; a lone ``|`` between alternatives and ``...`` (repeat) are skipped. No
command is skipped.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer

from featcache.cli import app

README = Path(__file__).parent.parent / "README.md"
#: Shell separators between commands on one line; a lone "|" is an alternative in the README's notation, not a pipe.
SEPARATORS = {"&&", "||", ";"}
PLACEHOLDER_TOKENS = {"|", "..."}


@dataclass(frozen=True)
class ReadmeCommand:
    line: int
    words: tuple[str, ...]  # after "featcache"
    comment_options: tuple[str, ...]  # --options named in the line's trailing comment
    inline: bool = False  # an inline `featcache ...` span of the prose: may name a command without its arguments

    @property
    def label(self) -> str:
        return f"L{self.line}{'-inline' if self.inline else ''}:" + " ".join(self.words[:2])


def fenced_bash_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line inside ```bash fences, with backslash continuations joined."""
    lines: list[tuple[int, str]] = []
    inside, pending, start = False, "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        if raw.startswith("```"):
            inside = raw.strip() in ("```bash", "```sh", "```shell")
            continue
        if not inside:
            continue
        if not pending:
            start = number
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append((start, pending + raw))
        pending = ""
    return lines


def readme_commands() -> list[ReadmeCommand]:
    commands = []
    for number, line in fenced_bash_lines(README.read_text()):
        hash_mark = re.search(r"(?:^|\s)#\s", line)  # a shell comment (the README's comments hold no quotes to trip on)
        code, comment = (line[: hash_mark.start()], line[hash_mark.end() :]) if hash_mark else (line, "")
        segments: list[list[str]] = [[]]
        for token in shlex.split(code):
            if token in SEPARATORS:
                segments.append([])
            else:
                segments[-1].append(token)
        found = [segment for segment in segments if segment and segment[0] == "featcache"]
        for index, segment in enumerate(found):
            words = [token for word in segment[1:] for token in [word.strip("[]")] if token and token not in PLACEHOLDER_TOKENS]
            named = tuple(re.findall(r"(?<![\w-])--[a-z][\w-]*", comment)) if index == len(found) - 1 else ()
            commands.append(ReadmeCommand(number, tuple(words), named))
    return commands


def inline_commands() -> list[ReadmeCommand]:
    """`featcache ...` code spans in the prose (e.g. `featcache tokenize --store S --vq OUT/vq --name NAME`)."""
    commands = []
    for number, line in enumerate(README.read_text().splitlines(), 1):
        for span in re.findall(r"`(featcache [^`]+)`", line):
            commands.append(ReadmeCommand(number, tuple(shlex.split(span)[1:]), (), inline=True))
    return commands


COMMANDS = readme_commands()
INLINE = inline_commands()


def test_the_readme_has_the_commands_this_test_checks() -> None:
    """Guards the extraction itself: the README's usage blocks are found (not silently zero commands)."""
    names = {" ".join(command.words[:2]) if command.words[0] in ("data", "analyze", "bench") else command.words[0] for command in COMMANDS}
    assert names >= {"quickstart", "data synth", "extract", "info", "encoders", "train-vq", "tokenize", "analyze codes",
                     "analyze separability", "train-ocl", "eval", "import-vvo", "bench known-answer", "sweep", "report", "run"}


# typer vendors click (typer._click in typer 0.29, the `click` package before): duck-typed, not isinstance.
def option_names(command: Any) -> dict[str, Any]:
    names = {}
    for parameter in command.params:
        if parameter.param_type_name == "option":
            for name in (*parameter.opts, *parameter.secondary_opts):
                names[name] = parameter
    return names


@pytest.mark.parametrize("readme", COMMANDS + INLINE, ids=lambda command: command.label)
def test_readme_command_matches_the_cli(readme: ReadmeCommand) -> None:
    command = typer.main.get_command(app)
    words = list(readme.words)
    path = ["featcache"]
    while getattr(command, "commands", None) is not None:  # a group
        if words == ["--help"]:
            return  # every group and command takes --help
        assert words, f"README line {readme.line}: `{' '.join(path)}` needs a subcommand: {sorted(command.commands)}"
        name = words.pop(0)
        assert name in command.commands, f"README line {readme.line}: `{' '.join(path)} {name}`: no such command; {sorted(command.commands)}"
        command = command.commands[name]
        path.append(name)
    where = f"README line {readme.line}: `{' '.join(path)}`"
    options = option_names(command)
    positional: list[str] = []
    while words:
        word = words.pop(0)
        if not word.startswith("-") or word == "-":
            positional.append(word)
            continue
        name, has_value, _ = word.partition("=")
        if name == "--help":
            continue  # every command takes --help
        assert name in options, f"{where} has no option {name}; its options: {sorted(options)}"
        option = options[name]
        if option.is_flag or option.count:
            assert not has_value, f"{where}: {name} is a flag and takes no value"
        elif not has_value:
            assert words and not words[0].startswith("--"), f"{where}: {name} needs a value"
            words.pop(0)
    arguments = [parameter for parameter in command.params if parameter.param_type_name == "argument"]
    most = sum(argument.nargs if argument.nargs > 0 else 10**6 for argument in arguments)
    least = sum(max(argument.nargs, 1) for argument in arguments if argument.required)
    if not readme.inline:
        assert least <= len(positional) <= most, f"{where} takes {least}..{most} arguments, the README gives {positional}"
    for name in readme.comment_options:
        assert name in options, f"{where}: its comment names {name}, which it does not have; its options: {sorted(options)}"
