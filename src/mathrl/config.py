"""Configs: one flat dataclass per command, filled from defaults < a YAML file < command-line flags.

Every field becomes a ``--kebab-case`` flag whose help text is the field's ``help`` metadata. A YAML file may set
only fields of the same dataclass; an unknown key, a value of the wrong type or an impossible combination is
rejected with one line before any work starts (``UsageError``, exit code 2). Nothing rewrites another field.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from pathlib import Path

import yaml

from mathrl.errors import UsageError


def field(default, help: str, **kwargs):  # noqa: A002 - mirrors argparse's name
    """A dataclass field with a help text (shown by --help)."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def _base_type(tp):
    """(base type, optional?) for int, float, str, bool, Optional[X], tuple[X, ...], list[X]."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _base_type(args[0])[0], True
    return tp, False


def _type_hints(cls) -> dict:
    return typing.get_type_hints(cls)


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """Add one flag per field of dataclass ``cls``; flags not given are absent from the namespace."""
    hints = _type_hints(cls)
    parser.add_argument("--config", type=str, default=argparse.SUPPRESS,
                        help="YAML file with values for the flags below (flags given here win)")
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        flag = "--" + f.name.replace("_", "-")
        flags = (f"-{f.name}", flag) if len(f.name) == 1 else (flag,)
        tp, _ = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata.get('help', '')} (default: {default!r})"
        origin = typing.get_origin(tp)
        if tp is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif origin in (list, tuple):
            item = typing.get_args(tp)[0]
            parser.add_argument(*flags, type=item, nargs="+", default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(*flags, type=tp if tp in (int, float) else str, default=argparse.SUPPRESS,
                                help=help_text, metavar=f.name.upper(), dest=f.name)


def _coerce(name: str, tp, value, source: str):
    base, optional = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise UsageError(f"{source}: {name} may not be empty")
    origin = typing.get_origin(base)
    if origin in (list, tuple):
        item = typing.get_args(base)[0]
        if not isinstance(value, (list, tuple)):
            value = [value]
        items = [_coerce(name, item, v, source) for v in value]
        return tuple(items) if origin is tuple else items
    if base is bool:
        if isinstance(value, bool):
            return value
        raise UsageError(f"{source}: {name} must be true or false, got {value!r}")
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{source}: {name} must be an integer, got {value!r}")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{source}: {name} must be a number, got {value!r}")
        return float(value)
    if base is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UsageError(f"{source}: {name} must be a string, got {value!r}")
        return str(value)
    return value


def load_yaml(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UsageError(f"{path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of option names to values")
    return data


def build(cls, values: dict, source: str = "config"):
    """An instance of dataclass ``cls`` from a mapping; unknown keys and wrong types are errors."""
    hints = _type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in names:
            close = difflib.get_close_matches(name, sorted(names), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"{source}: unknown option {key!r}{hint}")
        kwargs[name] = _coerce(name, hints[name], value, source)
    cfg = cls(**kwargs)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def from_args(cls, args: argparse.Namespace):
    """defaults < --config YAML < flags given on the command line."""
    values = {}
    source = "config"
    if getattr(args, "config", None):
        values.update(load_yaml(args.config))
        source = args.config
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "command", "func", "subcommand")}
    values.update(flags)
    return build(cls, values, source)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save(cfg, path: Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
