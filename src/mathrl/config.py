"""Configs: one dataclass per command, composed of the shared groups in ``settings.py``, filled from
defaults < a YAML file < command-line flags.

A field whose type is a dataclass is a *group* (``group(Optim, lr=1e-4)``: the group with the command's own
defaults); its fields are flattened, so every leaf field becomes one ``--kebab-case`` flag whose help text is the
field's ``help`` metadata and whose name is the same in every command that composes the group. A YAML file uses
the same flat names (``config.yaml`` in a run directory is written that way and can be passed back with
``--config``). An unknown key, a value of the wrong type or an impossible combination is rejected with one line
before any work starts (``UsageError``, exit code 2); a spelling that an older mathrl used (``RENAMED``) gets a
"did you mean" with its new name. Nothing rewrites another field.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
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


# spellings of earlier versions -> today's field (configs are versioned by the fields they name)
RENAMED = {"microbatch_size": "micro_batch_size", "minibatch_size": "batch_size", "policy": "model",
           "dev_size": "eval_size",
           "skip_zero_signal": "zero_signal"}


def group(cls, **defaults):
    """A field holding group ``cls`` (a dataclass of settings), with this command's own defaults."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(defaults) - names
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {sorted(unknown)}")
    return dataclasses.field(default_factory=lambda: cls(**defaults), metadata={"group": cls, "defaults": defaults})


def leaves(cls) -> list[tuple[str | None, dataclasses.Field, object, object]]:
    """(group attribute or None, field, its default, its type) for every flag of config class ``cls``."""
    hints = _type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if "group" in f.metadata:
            inner_hints = _type_hints(f.metadata["group"])
            for g in dataclasses.fields(f.metadata["group"]):
                default = f.metadata["defaults"].get(g.name, _default(g))
                out.append((f.name, g, default, inner_hints[g.name]))
        else:
            out.append((None, f, _default(f), hints[f.name]))
    names = [leaf[1].name for leaf in out]
    if len(names) != len(set(names)):
        raise TypeError(f"{cls.__name__}: two groups define the same flag")
    return out


def _default(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """Add one flag per field of dataclass ``cls``; flags not given are absent from the namespace."""
    parser.add_argument("--config", type=str, default=argparse.SUPPRESS,
                        help="YAML file with values for the flags below (flags given here win)")
    for _, f, default, hint in leaves(cls):
        flag = "--" + f.name.replace("_", "-")
        flags = (f"-{f.name}", flag) if len(f.name) == 1 else (flag,)
        tp, _ = _base_type(hint)
        # argparse formats help texts with %: a literal % (in a help text or a default) is written %%
        help_text = f"{f.metadata.get('help', '')} (default: {default!r})".replace("%", "%%")
        origin = typing.get_origin(tp)
        if tp is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif origin in (list, tuple):
            item = typing.get_args(tp)[0]
            # repeatable: `--stop A --stop B` and `--stop A B` both give [A, B]
            parser.add_argument(*flags, type=item, nargs="+", action="extend", default=argparse.SUPPRESS,
                                help=help_text)
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
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UsageError(f"{path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of option names to values")
    return data


def unknown_flag(cls, extra: list[str]) -> UsageError:
    """The error for command-line words no flag of ``cls`` takes (a renamed flag gets its new name)."""
    flags = [a for a in extra if a.startswith("--")]
    if not flags:
        return UsageError(f"unrecognized arguments: {' '.join(extra)}")
    names = {f.name for _, f, _, _ in leaves(cls)}
    name = flags[0][2:].split("=")[0].replace("-", "_")
    if name in getattr(cls, "RETIRED", {}):
        return UsageError(f"unknown flag {flags[0]}: it {cls.RETIRED[name][1]}")
    renamed, close = _suggest(name, names)
    as_flag = "--" + (renamed or close or "").replace("_", "-")
    if renamed:
        return UsageError(f"unknown flag {flags[0]} (renamed: did you mean {as_flag}?)")
    hint = f" (did you mean {as_flag}?)" if close else ""
    return UsageError(f"unrecognized arguments: {' '.join(extra)}{hint}")


def unknown_option(name: str, names, source: str) -> UsageError:
    """The error for a config key ``cls`` does not have, with its new name if it was renamed, else a close one."""
    renamed, close = _suggest(name, names)
    if renamed:
        return UsageError(f"{source}: unknown option {name!r} (renamed: did you mean {renamed!r}?)")
    hint = f" (did you mean {close!r}?)" if close else ""
    return UsageError(f"{source}: unknown option {name!r}{hint}")


def _suggest(name: str, names) -> tuple[str | None, str | None]:
    """(the new name if ``name`` is an old spelling of one of ``names``, else None; the closest of ``names``)."""
    new = RENAMED.get(name)
    close = difflib.get_close_matches(name, sorted(names), n=1)
    return (new if new in names else None), (close[0] if close else None)


def build(cls, values: dict, source: str = "config", explicit=()):
    """An instance of config class ``cls`` from a flat mapping of flag names (or of group names to mappings);
    unknown keys and wrong types are errors. The flags recorded as given (``given``) are those named in
    ``explicit`` (the command line's) and the keys of ``values`` whose value is not the command's default: a
    mapping that restates a default, as every run's config.yaml does, is a record, not a request."""
    where = {f.name: (grp, hint) for grp, f, _, hint in leaves(cls)}
    groups = {f.name: f.metadata for f in dataclasses.fields(cls) if "group" in f.metadata}
    flat = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name in groups and isinstance(value, dict):  # nested form: {optim: {lr: ...}}
            flat.update({str(k).replace("-", "_"): v for k, v in value.items()})
        else:
            flat[name] = value
    top, inner = {}, {g: {} for g in groups}
    defaults = {f.name: default for _, f, default, _ in leaves(cls)}
    chosen = set()
    retired = getattr(cls, "RETIRED", {})  # {name: (the value still read back, why any other is refused)}
    for name, value in flat.items():
        if name not in where and name in retired:
            if value == retired[name][0]:
                continue  # an older config file's record of a setting this command no longer has
            raise UsageError(f"{source}: {name} {value!r} {retired[name][1]}")
        if name not in where:
            raise unknown_option(name, where, source)
        grp, hint = where[name]
        value = _coerce(name, hint, value, source)
        (inner[grp] if grp else top)[name] = value
        if name in explicit or value != defaults[name]:
            chosen.add(name)
    for g, meta in groups.items():
        top[g] = meta["group"](**{**meta["defaults"], **inner[g]})
        _record_given(top[g], chosen & set(inner[g]))
    cfg = cls(**top)
    _record_given(cfg, chosen)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


_GIVEN = "_mathrl_given"


def _record_given(obj, names) -> None:
    obj.__dict__[_GIVEN] = frozenset(names)


def given(cfg) -> frozenset[str]:
    """The flag names the user set on ``cfg`` (a command's config, or one of its groups), as ``build`` recorded
    them from the command line and the ``--config`` file: whether a flag was given is known from the parser, never
    by comparing its value with a copy of its default. A config made in Python without ``build`` has no record;
    its given flags are then the fields whose value differs from the default its class declares."""
    recorded = cfg.__dict__.get(_GIVEN)
    if recorded is not None:
        return recorded
    if any("group" in f.metadata for f in dataclasses.fields(cfg)):
        values = to_dict(cfg)
        return frozenset(f.name for grp, f, default, _ in leaves(type(cfg)) if values[f.name] != default)
    return frozenset(f.name for f in dataclasses.fields(cfg) if f.init and getattr(cfg, f.name) != _default(f))


def refuse(cfg, names, why: str) -> None:
    """A one-line ``UsageError`` when any of the flags ``names`` was given on ``cfg``: with the other settings it
    cannot affect the run, and a flag that silently does nothing is worse than an error. ``why`` completes
    "--flag has no effect ..." (e.g. "without --reward orm")."""
    hit = [n for n in names if n in given(cfg)]
    if hit:
        flags = ", ".join("--" + n.replace("_", "-") for n in hit)
        raise UsageError(f"{flags} {'has' if len(hit) == 1 else 'have'} no effect {why}")


def from_args(cls, args: argparse.Namespace):
    """defaults < --config YAML < flags given on the command line."""
    values = {}
    source = "config"
    if getattr(args, "config", None):
        values.update(load_yaml(args.config))
        source = args.config
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "command", "func", "subcommand")}
    values.update(flags)
    return build(cls, values, source, explicit=flags)


def to_dict(cfg) -> dict:
    """The flat mapping of flag names to values (what ``--config`` reads back)."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if "group" in f.metadata:
            out.update(dataclasses.asdict(value))
        else:
            out[f.name] = value
    return out


def save(cfg, path: Path) -> None:
    """``cfg`` as flat YAML (``--config`` reads it back), under a comment naming the command whose Config it is
    (its ``COMMAND``), so that ``--resume`` can tell another command's run directory (``saved_command``)."""
    command = getattr(type(cfg), "COMMAND", None)
    header = f"# mathrl {command}: the settings of this run (`mathrl {command} --config` reads them back)\n" \
        if command else ""
    Path(path).write_text(header + yaml.safe_dump(to_dict(cfg), sort_keys=False))


def saved_command(path: Path) -> str | None:
    """The command a config file ``save`` wrote names in its first line, or None (no file, or one written by
    hand or by an earlier version)."""
    try:
        first = Path(path).read_text().split("\n", 1)[0]
    except (OSError, UnicodeDecodeError):
        return None
    match = re.fullmatch(r"# mathrl ([a-z ]+): .*", first)
    return match.group(1) if match else None
