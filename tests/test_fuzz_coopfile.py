"""CF-2, CF-3, SEC-4: Coopfiles assembled from TOML pieces — right and wrong tables, keys
and value types, broken syntax — load or give one CoopfileError line; whatever loads
can be used to start a session (argv, environment, build hash) without an exception."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coop import coopfile
from coop.coopfile import CoopfileError, agent_argv, build_hash, expand_env, load
from tests.fuzzing import Recipe, fuzz

ODD_TABLES = ["agnet", "env.x", "[x]", "agent.x"]
KEYS = sorted({k for keys in coopfile.SCHEMA.values() for k in keys}
              | set(coopfile.KNOWN_MANAGERS) | {"PATH", "A B", "x-y", '"q"'})
VALUES = ['"sh"', '"claude --x"', "\"'unbalanced\"", '""', '"host"', '"alpine:3.20"',
          '"oci:./img:v1"', '"Alpine"', '"4G"', '"0"', '"none"', '"veth"', '"proxy"', '"$HOME"',
          '"$$x"', '"$"', '"a\\u0000b"', '"../x"', '"/w"', '"/"', '"*.example.org"', '"\\u0003"',
          "0", "-1", "1", "3000", "9223372036854775808", "1.5", "inf", "nan", "true", "false",
          "1979-05-27", "07:32:00", "[]", '["git", "-x"]', '["a b"]', "[1, \"a\"]", "{}",
          '{ a = "1" }', "[[1]]", "'''x'''"]
GOOD = {"image": ['"host"', '"alpine:3.20"', '"oci:./img:v1"'], "run": ['["true", "echo x"]'],
        "command": ['"sh"', '"claude --x"'], "args": ['["-v"]', "[]"], "install": ['"x | sh"'],
        "mount": ['"/workspace"'], "path": ['"/w"'],
        "mode": ['"none"', '"veth"', '"host"', '"proxy"'], "allow": ['["*.example.org", "a.b"]'],
        "persist": ['[".cache"]'], "auto_restart": ["true"], "record": ["false"],
        "restart_delay_ms": ["0"], "scrollback_bytes": ["3000"], "attention_quiet_ms": ["10"],
        "ctrl_c_debounce_ms": ["0"], "on_attention": ['"notify-send x"'],
        "memory": ['"4G"', "1048576"], "pids": ["64"], "cpu": ["1.5", "2"],
        "block_sequences": ['["\\u0003x"]'], "env": ['"v"', '"$HOME"', '"$$x"'],
        "packages": ['["git"]']}
BREAKERS = ["[", "]", "=", '"', "\n", "#", ",", "{", "\\", "\xff"]


def toml_document(r: Recipe) -> bytes:
    """Mostly known tables and keys (so values get checked), sometimes unknown ones,
    duplicates or a stray syntax character."""
    tables: dict[str, dict[str, str]] = {}
    for _ in range(r.pick(5)):
        name = r.choice(ODD_TABLES if r.chance(10) else sorted(coopfile.SCHEMA))
        known = sorted(coopfile.SCHEMA.get(name, {})) or KEYS
        body = tables.setdefault(name, {})
        for _ in range(r.pick(4)):
            key = r.choice(KEYS if r.chance(4) else known)
            good = GOOD.get(name if name in coopfile.MAP_TABLES else key)
            body[key] = r.choice(VALUES if r.chance(3) or not good else good)
    lines = []
    for name, body in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {value}" for key, value in body.items()]
        if r.chance(16):
            lines.append(r.choice(BREAKERS + lines))
    return "\n".join(lines).encode("utf-8", "surrogateescape")


@pytest.fixture(scope="module")
def layers(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-coopfile")
    (root / "ws").mkdir()
    return root / "global.toml", root / "ws"


@pytest.mark.slow
@fuzz()
@given(st.binary(max_size=64))
def test_fuzz_coopfile_layers_load_or_give_one_line(layers, data):
    global_file, workspace = layers
    r = Recipe(data)
    global_file.write_bytes(toml_document(r))
    (workspace / "coop.toml").write_bytes(toml_document(r))
    overrides = None if r.chance(4) else {"agent": {"command": "sh"}}
    try:
        loaded = load(workspace=str(workspace), global_path=str(global_file),
                      overrides=overrides, host_env={"HOME": "/h"})
    except CoopfileError as error:
        assert "\n" not in str(error)
        return
    table = loaded.table
    assert agent_argv(table)
    assert isinstance(build_hash(table), str)
    assert all("\0" not in v for v in expand_env(table["env"], {"HOME": "/h"}).values())
    assert coopfile.validate(table) == table
