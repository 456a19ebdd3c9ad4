"""Application layer: ``--config FILE``, the relay's command-line options in a TOML file.

Every key is a long option of the command line under the same name, with a value of
the option's type: ``dev = true`` for a flag, ``max-queued-bytes = 1048576`` for a
number, ``bind = "[::]:443"`` for a string, and a list of strings for the repeatable
options (``tls-cert = ["a.pem", "b.pem"]``). The file is turned into command-line
arguments placed before the real ones, so the options parser checks both the same way;
an option given on the command line replaces the file's (all of a repeatable option's
values, not one by one). An unknown key or a value of the wrong type is a usage error
that names the file and the key.
"""

from __future__ import annotations

import getopt
import tomllib
from typing import Any

from twisted.python import usage

CONFIG_OPTION = "config"
# Options that mean nothing in a file.
_NOT_IN_FILE = frozenset({CONFIG_OPTION, "help", "version"})


def read_config(path: str) -> dict[str, Any]:
    """The TOML table in ``path``; UsageError if it cannot be read or parsed."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise usage.UsageError(f"--config: cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise usage.UsageError(f"--config: {path} is not valid TOML: {e}") from None


def _canonical(options: usage.Options, opt: str) -> str | None:
    name = opt[2:] if opt.startswith("--") else opt[1:]
    synonym = options.synonyms.get(name) or options.synonyms.get(name.replace("-", "_"))
    return synonym if isinstance(synonym, str) else None


def command_line(options: usage.Options, argv: list[str]) -> tuple[str | None, set[str]]:
    """The ``--config`` path given in ``argv`` (the last one) and the long names of every
    option ``argv`` sets. Malformed arguments give ``(None, set())``: the options parser
    then reports them itself."""
    try:
        pairs, _ = getopt.getopt(argv, options.shortOpt, options.longOpt)
    except getopt.GetoptError:
        return None, set()
    path = None
    given = set()
    for opt, value in pairs:
        name = _canonical(options, opt)
        if name is None:
            continue
        given.add(name)
        if name == CONFIG_OPTION:
            path = value
    return path, given


def _check(kind: str, valid: bool, where: str) -> None:
    if not valid:
        raise usage.UsageError(f"{where} must be {kind}")


def file_arguments(
    options: usage.Options, path: str, table: dict[str, Any], skip: set[str] | None = None
) -> list[str]:
    """Command-line arguments equivalent to the TOML ``table`` read from ``path``, less
    the options named in ``skip`` (once checked).

    The option's kind comes from the parser itself: a flag takes a boolean; a parameter
    with a number as default a number of that kind; other parameters a string; options
    handled by an ``opt_`` method taking a value are repeatable (a string or a list).
    """
    flags = {name for name in options.longOpt if not name.endswith("=")}
    parameters = {name[:-1] for name in options.longOpt if name.endswith("=")}
    args: list[str] = []
    for key, value in table.items():
        given = _arguments(options, flags, parameters, f"{path}: {key}", key, value)
        if skip is None or key not in skip:
            args += given
    return args


def _arguments(
    options: usage.Options, flags: set[str], parameters: set[str], where: str, key: str, value: Any
) -> list[str]:
    if key in _NOT_IN_FILE or (key not in flags and key not in parameters):
        raise usage.UsageError(f"{where}: no such option (see --help)")
    flag = f"--{key}"
    if key in flags:
        _check("true or false", isinstance(value, bool), where)
        return [flag] if value else []
    if key not in options.defaults:
        values = value if isinstance(value, list) else [value]
        _check("a string or a list of strings", all(isinstance(v, str) for v in values), where)
        return [arg for item in values for arg in (flag, item)]
    default = options.defaults[key]
    if isinstance(default, int):
        _check("an integer", isinstance(value, int) and not isinstance(value, bool), where)
    elif isinstance(default, float):
        _check("a number", isinstance(value, int | float) and not isinstance(value, bool), where)
    else:
        _check("a string", isinstance(value, str), where)
    return [flag, str(value)]


def with_config_file(options: usage.Options, argv: list[str]) -> list[str]:
    """``argv`` with the ``--config`` file's options in front of it, less those that
    ``argv`` sets itself (the command line wins)."""
    path, given = command_line(options, argv)
    if path is None:
        return argv
    return file_arguments(options, path, read_config(path), given) + argv
