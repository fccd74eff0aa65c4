"""The Coopfile, ``coop.toml`` (SPEC §2): layering, validation, ``$NAME`` expansion, build hash.

Every layer is checked on its own so that an error names the file the bad value came
from; the merged table is then checked for what only the whole can tell (CF-3).
Only `load` touches the file system; everything else is pure.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import os
import posixpath
import re
import shlex
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Mapping

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

from coop import paths


class CoopfileError(Exception):
    """A Coopfile problem; ``str()`` is one line naming file, key path, expected and got."""


@dataclass(frozen=True)
class Loaded:
    table: dict  # merged, validated, unexpanded, every default filled in
    warnings: list[str]  # CF-3 warnings, one line each
    sources: list[str]  # files that contributed, in layer order


DEFAULTS: dict = {
    "base": {"image": "host"},
    "packages": {},
    "setup": {"run": []},
    "agent": {"args": [], "install": ""},
    "workspace": {"mount": ".", "path": "/workspace"},
    "env": {"TERM": "xterm-256color"},
    "network": {"mode": "veth", "allow": []},
    "session": {
        "persist": [".claude"],
        "auto_restart": True,
        "restart_delay_ms": 1000,
        "scrollback_bytes": 1048576,
        "record": False,
        "attention_quiet_ms": 3000,
        "on_attention": "",
    },
    "limits": {},
    "input_filter": {"ctrl_c_debounce_ms": 500, "block_sequences": []},
}

KNOWN_MANAGERS = ("apk", "apt", "apt-get", "dnf", "yum", "pacman", "pip", "npm")
NETWORK_MODES = ("none", "host", "veth", "proxy")
DEFAULTS_SOURCE = "built-in defaults"
OVERRIDES_SOURCE = "command line"

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_LABEL = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]{0,61}[A-Za-z0-9])"
_HOST_PATTERN = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([KMGT])(?:I?B)?|B)?", re.I | re.A)

# OCI distribution reference grammar (IMG-1), kept minimal: the image package parses fully.
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?")
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_LOCAL_IMAGE_PREFIXES = ("oci:", "docker-archive:", "dir:")
IMAGE_FORMS = "host, oci:PATH[:TAG], docker-archive:PATH, dir:PATH or a reference like alpine:3.20"


def check_image(text: str) -> None:
    """Raise ValueError(reason) unless `text` is one of the IMG-1 image forms."""
    if text == "host":
        return
    for prefix in _LOCAL_IMAGE_PREFIXES:
        if text.startswith(prefix):
            rest = text[len(prefix):]
            path, colon, tag = rest.rpartition(":") if prefix == "oci:" and ":" in rest else (
                rest, "", "")
            if not path:
                raise ValueError(f"no path after {prefix}")
            if colon and not tag:
                raise ValueError("empty tag after the last ':'")
            return
    if not text:
        raise ValueError("empty")
    if any(c.isspace() for c in text):
        raise ValueError("contains whitespace")
    name, at, digest = text.partition("@")
    if at and not _DIGEST.fullmatch(digest):
        raise ValueError("invalid digest")
    if digest.startswith("sha256:") and not re.fullmatch(r"[0-9a-f]{64}", digest[7:]):
        raise ValueError("a sha256 digest is 64 lowercase hex digits")
    if name.rfind(":") > name.rfind("/"):
        name, _, tag = name.rpartition(":")
        if not _TAG.fullmatch(tag):
            raise ValueError("invalid tag")
    first, slash, rest = name.partition("/")
    if slash and (first == "localhost" or first != first.lower() or any(c in first for c in ".:")):
        if not _DOMAIN.fullmatch(first):
            raise ValueError("invalid registry host")
        name = rest
    for component in name.split("/"):
        if not _PATH_COMPONENT.fullmatch(component):
            if _PATH_COMPONENT.fullmatch(component.lower()):
                raise ValueError("repository names are lowercase")
            raise ValueError("invalid repository name")
    if len(text.partition("@")[0]) > 255:
        raise ValueError("name longer than 255 characters")


def parse_size(text: str) -> int:
    """``"4G"``, ``"512M"``, ``"1.5K"``, ``"100"`` -> bytes (binary units)."""
    match = _SIZE.fullmatch(text.strip()) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"invalid size {_show(text)}: expected a number with an optional "
                         "K, M, G or T suffix, e.g. 4G or 512M")
    power = " KMGT".index((match[2] or " ").upper())
    return int(Decimal(match[1]) * 1024**power)


# ---- value checkers: return the value or raise _Invalid ------------------------------------

class _Invalid(Exception):
    """A bad value, before it is given its file and key path."""

    def __init__(self, expected: str, value: Any, reason: str = "", secret: bool = False):
        self.expected, self.value, self.reason, self.secret = expected, value, reason, secret
        self.index: int | None = None


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value[:60], ensure_ascii=False)
        return text[:-1] + '…"' if len(value) > 60 else text
    if isinstance(value, (int, float)):
        return "a huge integer" if isinstance(value, int) and abs(value) > 2**64 else repr(value)
    return _kind(value)


def _kind(value: Any) -> str:
    kinds = {bool: "true/false", str: "a string", int: "an integer", float: "a float",
             list: "an array", dict: "a table", type(None): "null"}
    return kinds.get(type(value), f"a {type(value).__name__}")


def _string(value: Any) -> str:
    """A string that can become a path, an argument or an environment entry."""
    if not isinstance(value, str):
        raise _Invalid("a string", value)
    if "\0" in value:
        raise _Invalid("a string without NUL characters", value)
    return value


def _predicate(expected: str, test: Callable[[Any], bool], base: Callable = _string):
    """A checker that accepts what `base` accepts and `test` approves of."""
    def check(value: Any) -> Any:
        try:
            ok = test(base(value))
        except (_Invalid, ValueError):
            ok = False
        if not ok:
            raise _Invalid(expected, value)
        return value
    return check


def _is(expected: str, test: Callable[[Any], bool]) -> Callable:
    return _predicate(expected, test, base=lambda value: value)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_size(value: Any) -> bool:
    return (parse_size(value) if isinstance(value, str) else value if _int(value) else 0) > 0


def _list_of(item: Callable) -> Callable:
    def check(value: Any) -> list:
        if not isinstance(value, list):
            raise _Invalid("an array", value)
        for index, element in enumerate(value):
            try:
                item(element)
            except _Invalid as invalid:
                invalid.index = index
                raise
        return value
    return check


def _command(value: Any) -> str:
    try:
        argv = shlex.split(_string(value))
    except ValueError as error:
        raise _Invalid("a command line", value, reason=str(error)) from None
    if not argv:
        raise _Invalid("a non-empty command", value)
    return value


def _image(value: Any) -> str:
    try:
        check_image(_string(value))
    except ValueError as error:
        raise _Invalid(IMAGE_FORMS, value, reason=str(error)) from None
    return value


def _env_value(value: Any) -> str:
    """CF-4: never show the value; say only what kind of thing it is."""
    if not isinstance(value, str):
        raise _Invalid("a string", value, secret=True)
    if "\0" in value:
        raise _Invalid("a string without NUL characters", value, reason="contains NUL",
                       secret=True)
    if value.startswith("$") and not value.startswith("$$") and not _reference(value):
        raise _Invalid('"$NAME", "$$" for a literal $, or text not starting with $', value,
                       reason="starts with $ but is not $NAME", secret=True)
    return value


def _relative_path(path: str) -> bool:
    return (not path.startswith("/") and ".." not in path.split("/")
            and posixpath.normpath(path) != ".")


def _absolute_path(path: str) -> bool:
    return path.startswith("/") and ".." not in path.split("/") and posixpath.normpath(path) != "/"


_non_negative = _is("a non-negative integer", lambda v: _int(v) and v >= 0)
_boolean = _is("true or false", lambda v: isinstance(v, bool))
_package = _predicate("a package name", lambda v: v != "" and v[0] != "-" and v.split() == [v])

SCHEMA: dict[str, dict[str, Callable]] = {
    "base": {"image": _image},
    "packages": {},  # map table: any manager name
    "setup": {"run": _list_of(_string)},
    "agent": {"command": _command, "args": _list_of(_string), "install": _string},
    "workspace": {"mount": _predicate("a non-empty path", bool),
                  "path": _predicate('an absolute path other than / without ".."',
                                      _absolute_path)},
    "env": {},  # map table: any variable name
    "network": {"mode": _is(f"one of {', '.join(NETWORK_MODES)}", lambda v: v in NETWORK_MODES),
                "allow": _list_of(_predicate("a host name or *.suffix pattern",
                                             lambda v: bool(_HOST_PATTERN.fullmatch(v))
                                             and len(v) <= 253))},
    "session": {"persist": _list_of(_predicate('a relative path without ".."', _relative_path)),
                "auto_restart": _boolean,
                "restart_delay_ms": _non_negative,
                "scrollback_bytes": _non_negative,
                "record": _boolean,
                "attention_quiet_ms": _non_negative,
                "on_attention": _string},
    "limits": {"memory": _is('a size like "4G" or a positive number of bytes', _positive_size),
               "pids": _is("a positive integer", lambda v: _int(v) and v > 0),
               "cpu": _is("a positive number", lambda v: (
                   _int(v) or isinstance(v, float) and math.isfinite(v)) and v > 0)},
    "input_filter": {"ctrl_c_debounce_ms": _non_negative,
                     "block_sequences": _list_of(_is("a non-empty string",
                                                     lambda v: isinstance(v, str) and v != ""))},
}
MAP_TABLES = {"env": _env_value, "packages": _list_of(_package)}


# ---- layers --------------------------------------------------------------------------------

def _key(key: Any) -> str:
    text = str(key)
    return text if _BARE_KEY.fullmatch(text) else json.dumps(text, ensure_ascii=False)


def _did_you_mean(word: Any, options: list[str], show: Callable[[str], str] = str,
                  otherwise: str = "expected one of") -> str:
    close = difflib.get_close_matches(str(word), options, n=1)
    if close:
        return f"did you mean {show(close[0])}?"
    return f"{otherwise} {', '.join(show(option) for option in options)}"


def _unknown_table(name: Any, body: Any) -> str:
    as_key = [f"[{t}].{name}" for t, keys in SCHEMA.items() if name in keys]
    if isinstance(body, dict) or not as_key:
        return f"[{_key(name)}]: unknown table; {_did_you_mean(name, list(SCHEMA), '[{}]'.format)}"
    return f"{_key(name)}: unknown top-level key; did you mean {as_key[0]}?"


def _check_layer(raw: Any, source: str) -> tuple[dict, list[str]]:
    """Check one layer on its own; return a checked copy and its warnings."""
    if not isinstance(raw, dict):
        raise CoopfileError(f"{source}: expected a table at the top level; got {_show(raw)}")
    layer: dict = {}
    warnings: list[str] = []
    for name, body in raw.items():
        if name not in SCHEMA:
            raise CoopfileError(f"{source}: {_unknown_table(name, body)}")
        if not isinstance(body, dict):
            raise CoopfileError(f"{source}: [{name}]: expected a table; got {_show(body)}")
        layer[name] = {}
        for key, value in body.items():
            where = f"{source}: [{name}].{_key(key)}"
            if name == "env" and not (isinstance(key, str) and _ENV_NAME.fullmatch(key)):
                raise CoopfileError(f"{where}: expected a variable name (letters, digits, _, "
                                    "not starting with a digit)")
            if name == "packages" and key not in KNOWN_MANAGERS:
                warnings.append(f"{where}: unknown package manager; "
                                f"{_did_you_mean(key, list(KNOWN_MANAGERS), otherwise='known:')}")
            check = MAP_TABLES.get(name) or SCHEMA[name].get(key)
            if check is None:
                suggestion = _did_you_mean(key, list(SCHEMA[name]), f"[{name}].{{}}".format)
                raise CoopfileError(f"{where}: unknown key; {suggestion}")
            try:
                layer[name][key] = copy.deepcopy(check(value))
            except _Invalid as bad:
                index = "" if bad.index is None else f"[{bad.index}]"
                got = _kind(bad.value) if bad.secret else _show(bad.value)
                reason = f" ({bad.reason})" if bad.reason else ""
                raise CoopfileError(f"{where}{index}: expected {bad.expected}; got {got}{reason}") from None
    return layer, warnings


def _merge(layers: list[dict]) -> dict:
    """CF-1: later wins key by key; every value (lists included) is replaced whole."""
    merged = copy.deepcopy(DEFAULTS)
    for layer in layers:
        for name, body in layer.items():
            merged[name].update(copy.deepcopy(body))
    return merged


def _reference(value: str) -> str | None:
    """The NAME of a ``"$NAME"`` value, else None."""
    return value[1:] if value[:1] == "$" and _ENV_NAME.fullmatch(value[1:]) else None


def validate(table: dict, source: str = "coopfile") -> dict:
    """Check an already merged table (e.g. one a client sent) and fill in the defaults."""
    layer, _ = _check_layer(table, source)
    merged = _merge([layer])
    if "command" not in merged["agent"]:
        raise CoopfileError(f"{source}: no [agent].command; set one in coop.toml or pass --agent")
    return merged


def _parse(data: bytes, source: str) -> dict:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise CoopfileError(f"{source}: not valid UTF-8 (byte {error.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = " ".join(str(error).split())
        match = re.fullmatch(r"(.*) \(at (.*)\)", message)
        what, where = (match[1], match[2]) if match else (message, "")
        where = where if where.startswith("line") or not where else f"at {where}"
        what = what[:1].lower() + what[1:]
        raise CoopfileError(f"{source}: {where + ': ' if where else ''}{what}") from None
    except RecursionError:
        raise CoopfileError(f"{source}: nested too deeply") from None


def _read(path: Path, source: str, required: bool) -> dict | None:
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        if required:
            raise CoopfileError(f"{source}: no such file") from None
        return None
    except OSError as error:
        raise CoopfileError(f"{source}: cannot read ({error.strerror})") from None
    return _parse(data, source)


def _display(path: Path, workspace: str) -> str:
    """How a file is named in messages: relative to the workspace when inside it."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(workspace))
    return str(path) if relative.startswith("..") else relative


def _anchor_image(layer: dict, directory: Path) -> None:
    """A relative ``oci:``/``docker-archive:``/``dir:`` path means relative to the
    file that says it, not to whatever directory the CLI or the daemon runs in."""
    image = layer.get("base", {}).get("image", "")
    for prefix in _LOCAL_IMAGE_PREFIXES:
        if image.startswith(prefix) and not image[len(prefix):].startswith("/"):
            absolute = os.path.join(os.path.abspath(directory), image[len(prefix):])
            layer["base"]["image"] = prefix + os.path.normpath(absolute)
            return


def load(*, workspace: str, global_path: str | None = None, project_path: str | None = None,
         overrides: dict | None = None, host_env: Mapping[str, str] | None = None) -> Loaded:
    """CF-1 layers: defaults < global file < project file < command-line overrides."""
    host_env = os.environ if host_env is None else host_env
    files = [(Path(global_path) if global_path else paths.global_coopfile(), global_path),
             (Path(project_path) if project_path else Path(workspace) / "coop.toml", project_path)]
    checked: list[tuple[str, dict]] = []
    sources: list[str] = []
    warnings: list[str] = []
    for path, explicit in files:
        source = _display(path, workspace)
        raw = _read(path, source, required=explicit is not None)
        if raw is not None:
            layer, layer_warnings = _check_layer(raw, source)
            _anchor_image(layer, path.parent)
            checked.append((source, layer))
            sources.append(os.path.abspath(path))
            warnings += layer_warnings
    if overrides:
        checked.append((OVERRIDES_SOURCE, _check_layer(overrides, OVERRIDES_SOURCE)[0]))
    table = _merge([layer for _, layer in checked])
    if "command" not in table["agent"]:
        looked = ", ".join([DEFAULTS_SOURCE] + [source for source, _ in checked])
        raise CoopfileError(f"no [agent].command in any layer ({looked}); "
                            "set one in coop.toml or pass --agent")
    origin = {key: source for source, layer in checked for key in layer.get("env", {})}
    for key, value in table["env"].items():
        name = _reference(value)
        if name and name not in host_env:
            warnings.append(f"{origin.get(key, DEFAULTS_SOURCE)}: [env].{key}: ${name} is not "
                            f"set on the host; {key} will be left out")
    return Loaded(table=table, warnings=warnings, sources=sources)


# ---- using a validated table ---------------------------------------------------------------

def agent_argv(table: dict) -> list[str]:
    """The agent's argv: [agent].command (itself a command line) followed by [agent].args."""
    return shlex.split(table["agent"]["command"]) + list(table["agent"]["args"])


def expand_env(env: Mapping[str, str], host_env: Mapping[str, str]) -> dict[str, str]:
    """CF-4, only when a process starts: "$NAME" from the host (unset: left out), "$$x" -> "$x"."""
    expanded: dict[str, str] = {}
    for key, value in env.items():
        name = _reference(value)
        if value.startswith("$$"):
            expanded[key] = value[1:]
        elif name is None:
            expanded[key] = value
        elif name in host_env:
            expanded[key] = host_env[name]
    return expanded


def build_hash(table: dict) -> str:
    """CF-5: sha256 of the build-relevant tables of a validated table, in canonical JSON."""
    recipe = {"base": table["base"], "setup": table["setup"],
              "packages": {manager: names for manager, names in table["packages"].items() if names},
              "agent.install": table["agent"]["install"]}
    canonical = json.dumps(recipe, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def needs_build(table: dict) -> bool:
    """CF-5: only image = "host" with nothing to install runs without `coop init`."""
    return (table["base"]["image"] != "host" or any(table["packages"].values())
            or bool(table["setup"]["run"]) or bool(table["agent"]["install"].strip()))
