"""SPEC §2 (CF-1 … CF-5): layering, validation messages, $NAME expansion, build hash."""

from __future__ import annotations

import copy
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coop import coopfile
from coop.coopfile import (
    DEFAULTS, CoopfileError, agent_argv, build_hash, check_image, expand_env, load,
    needs_build, parse_size, validate,
)
from tests.fuzzing import fuzz

AGENT = '[agent]\ncommand = "claude"\n'


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A workspace and an empty config home, so the real ~/.config never leaks in."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def error_of(table: dict) -> str:
    with pytest.raises(CoopfileError) as caught:
        validate(table, "coop.toml")
    return str(caught.value)


def project_error(ws, text: str) -> str:
    write(ws / "coop.toml", text)
    with pytest.raises(CoopfileError) as caught:
        load(workspace=str(ws), host_env={})
    return str(caught.value)


# ---- CF-3: syntax -------------------------------------------------------------------------

def test_toml_syntax_error_names_line_and_column(workspace):
    message = project_error(workspace, AGENT + "[network]\nmode = vet\n")
    assert message.startswith("coop.toml: line 4, column 8: ")
    assert "\n" not in message


def test_unterminated_document_is_reported(workspace):
    message = project_error(workspace, '[agent]\ncommand = ["a",\n')
    assert message.startswith("coop.toml: at end of document: ")


def test_non_utf8_file_is_reported(workspace):
    (workspace / "coop.toml").write_bytes(b'[agent]\ncommand = "\xff"\n')
    with pytest.raises(CoopfileError, match=r"^coop\.toml: not valid UTF-8 \(byte 19\)$"):
        load(workspace=str(workspace), host_env={})


# ---- CF-3: unknown names --------------------------------------------------------------------

@pytest.mark.parametrize("table, message", [
    ({"netwrk": {}}, "coop.toml: [netwrk]: unknown table; did you mean [network]?"),
    ({"zzz": {}}, "coop.toml: [zzz]: unknown table; expected one of [base], [packages], [setup], "
                  "[agent], [workspace], [env], [network], [session], [limits], [input_filter]"),
    ({"image": "alpine"}, "coop.toml: image: unknown top-level key; did you mean [base].image?"),
    ({"network": {"mdoe": "none"}},
     "coop.toml: [network].mdoe: unknown key; did you mean [network].mode?"),
    ({"limits": {"zz": 1}},
     "coop.toml: [limits].zz: unknown key; expected one of [limits].memory, [limits].pids, "
     "[limits].cpu"),
    ({"agent": {"a b": 1}}, 'coop.toml: [agent]."a b": unknown key; expected one of '
                            "[agent].command, [agent].args, [agent].install"),
])
def test_unknown_names_suggest_the_closest(table, message):
    assert error_of(table) == message


# ---- CF-3: types and values ----------------------------------------------------------------

@pytest.mark.parametrize("table, message", [
    ({"session": {"auto_restart": "yes"}},
     'coop.toml: [session].auto_restart: expected true or false; got "yes"'),
    ({"session": {"record": 1}}, "coop.toml: [session].record: expected true or false; got 1"),
    ({"base": 1}, "coop.toml: [base]: expected a table; got 1"),
    ({"agent": {"command": "x", "args": "-v"}},
     'coop.toml: [agent].args: expected an array; got "-v"'),
    ({"agent": {"command": "x", "args": ["-v", 2]}},
     "coop.toml: [agent].args[1]: expected a string; got 2"),
    ({"agent": {"command": ""}},
     'coop.toml: [agent].command: expected a non-empty command; got ""'),
    ({"agent": {"command": "'x"}},
     "coop.toml: [agent].command: expected a command line; got \"'x\" (No closing quotation)"),
    ({"agent": {"command": "x", "install": ["a"]}},
     "coop.toml: [agent].install: expected a string; got an array"),
    ({"setup": {"run": [{"a": 1}]}}, "coop.toml: [setup].run[0]: expected a string; got a table"),
    ({"packages": {"apk": ["git", 3]}},
     "coop.toml: [packages].apk[1]: expected a package name; got 3"),
    ({"packages": {"apt": ["a b"]}},
     'coop.toml: [packages].apt[0]: expected a package name; got "a b"'),
    ({"packages": {"pip": "requests"}},
     'coop.toml: [packages].pip: expected an array; got "requests"'),
    ({"network": {"mode": "vet"}},
     'coop.toml: [network].mode: expected one of none, host, veth, proxy; got "vet"'),
    ({"network": {"allow": ["http://example.org"]}},
     'coop.toml: [network].allow[0]: expected a host name or *.suffix pattern; '
     'got "http://example.org"'),
    ({"session": {"restart_delay_ms": -1}},
     "coop.toml: [session].restart_delay_ms: expected a non-negative integer; got -1"),
    ({"session": {"restart_delay_ms": 1.5}},
     "coop.toml: [session].restart_delay_ms: expected a non-negative integer; got 1.5"),
    ({"session": {"scrollback_bytes": True}},
     "coop.toml: [session].scrollback_bytes: expected a non-negative integer; got true"),
    ({"input_filter": {"ctrl_c_debounce_ms": "500"}},
     'coop.toml: [input_filter].ctrl_c_debounce_ms: expected a non-negative integer; got "500"'),
    ({"input_filter": {"block_sequences": ["\x1b[200~", ""]}},
     'coop.toml: [input_filter].block_sequences[1]: expected a non-empty string; got ""'),
    ({"limits": {"memory": "4X"}},
     'coop.toml: [limits].memory: expected a size like "4G" or a positive number of bytes; '
     'got "4X"'),
    ({"limits": {"memory": 0}},
     'coop.toml: [limits].memory: expected a size like "4G" or a positive number of bytes; got 0'),
    ({"limits": {"pids": 0}}, "coop.toml: [limits].pids: expected a positive integer; got 0"),
    ({"limits": {"pids": 2.0}}, "coop.toml: [limits].pids: expected a positive integer; got 2.0"),
    ({"limits": {"cpu": -1}}, "coop.toml: [limits].cpu: expected a positive number; got -1"),
    ({"limits": {"cpu": float("nan")}},
     "coop.toml: [limits].cpu: expected a positive number; got nan"),
    ({"limits": {"cpu": True}}, "coop.toml: [limits].cpu: expected a positive number; got true"),
    ({"session": {"persist": [".cache", "../up"]}},
     'coop.toml: [session].persist[1]: expected a relative path without ".."; got "../up"'),
    ({"session": {"persist": ["/etc"]}},
     'coop.toml: [session].persist[0]: expected a relative path without ".."; got "/etc"'),
    ({"workspace": {"path": "workspace"}},
     'coop.toml: [workspace].path: expected an absolute path other than / without ".."; '
     'got "workspace"'),
    ({"workspace": {"path": "/a/../b"}},
     'coop.toml: [workspace].path: expected an absolute path other than / without ".."; '
     'got "/a/../b"'),
    ({"workspace": {"mount": ""}},
     'coop.toml: [workspace].mount: expected a non-empty path; got ""'),
    ({"base": {"image": "Alpine"}},
     'coop.toml: [base].image: expected host, oci:PATH[:TAG], docker-archive:PATH, dir:PATH or a '
     'reference like alpine:3.20; got "Alpine" (repository names are lowercase)'),
    ({"env": {"A B": "x"}},
     'coop.toml: [env]."A B": expected a variable name (letters, digits, _, not starting with a '
     "digit)"),
])
def test_bad_values_name_file_key_expected_and_got(table, message):
    table.setdefault("agent", {"command": "claude"})
    assert error_of(table) == message


@pytest.mark.parametrize("key", ["cpu", "pids", "memory"])
def test_huge_limits_from_a_client_are_handled(key):
    assert validate({"agent": {"command": "x"}, "limits": {key: 10**400}})["limits"][key]
    assert error_of({"limits": {key: -10**400}}).endswith("; got a huge integer")


def test_long_values_are_shortened_in_messages():
    message = error_of({"network": {"mode": "x" * 500}})
    assert message.endswith('got "' + "x" * 60 + '…"')


@pytest.mark.parametrize("value", [12345678, ["hunter2-secret"], "$SECRET_TOKEN/path",
                                   "hunter2\0secret"])
def test_env_errors_never_show_the_value(value):
    """CF-4: an [env] message names the key, never the value."""
    message = error_of({"agent": {"command": "x"}, "env": {"API_KEY": value}})
    assert message.startswith("coop.toml: [env].API_KEY: expected ")
    for secret in ("12345678", "hunter2", "SECRET_TOKEN", "path"):
        assert secret not in message


def test_block_sequences_take_toml_escapes(workspace):
    write(workspace / "coop.toml",
          AGENT + '[input_filter]\nblock_sequences = ["\\u0003", "rm -rf"]\n')
    table = load(workspace=str(workspace), host_env={}).table
    assert table["input_filter"]["block_sequences"] == ["\x03", "rm -rf"]


@pytest.mark.parametrize("pattern", ["example.org", "*.github.com", "localhost", "a-b.c0"])
def test_allow_accepts_host_names_and_suffixes(pattern):
    assert validate({"agent": {"command": "x"}, "network": {"allow": [pattern]}})


@pytest.mark.parametrize("pattern", ["", "*", "*.", "a..b", "-a.com", "a_b.com", "x.org:443",
                                     "*.*.org", "a" * 64 + ".org"])
def test_allow_rejects_other_patterns(pattern):
    assert "[network].allow[0]: expected a host name" in error_of(
        {"agent": {"command": "x"}, "network": {"allow": [pattern]}})


@pytest.mark.parametrize("memory, size", [("4G", 4 << 30), ("512M", 512 << 20), ("1024K", 1 << 20),
                                          ("100", 100), ("1.5k", 1536), ("2GiB", 2 << 30),
                                          (" 3 T ", 3 << 40)])
def test_parse_size(memory, size):
    assert parse_size(memory) == size
    assert validate({"agent": {"command": "x"}, "limits": {"memory": memory}})


@pytest.mark.parametrize("text", ["", "G", "4X", "-1G", "1e3", "4 G B", "٣"])
def test_parse_size_rejects_clearly(text):
    with pytest.raises(ValueError, match=r"^invalid size .*: expected a number with an optional "
                                         r"K, M, G or T suffix"):
        parse_size(text)


# ---- IMG-1 accepted forms ----------------------------------------------------------------

@pytest.mark.parametrize("image", [
    "host", "alpine", "alpine:3.20", "node:22-alpine", "ghcr.io/org/img:tag",
    "registry:5000/name@sha256:" + "a" * 64, "localhost:5000/a/b:t", "library/alpine:latest",
    "a__b/c.d-e---f:T_1.x", "alpine:3.20@sha256:" + "0" * 64, "[::1]:5000/img:1",
    "oci:/images/alpine", "oci:/images/alpine:3.20", "docker-archive:/tmp/a.tar", "dir:/srv/root",
])
def test_image_forms_accepted(image):
    check_image(image)
    assert validate({"agent": {"command": "x"}, "base": {"image": image}})["base"]["image"] == image


@pytest.mark.parametrize("image, reason", [
    ("Alpine", "repository names are lowercase"),
    ("a::b", "invalid repository name"),
    ("", "empty"),
    ("alpine 3", "contains whitespace"),
    ("alpine:", "invalid tag"),
    ("alpine:-x", "invalid tag"),
    ("alpine@sha256:abc", "invalid digest"),
    ("alpine@sha256:" + "A" * 64, "a sha256 digest is 64 lowercase hex digits"),
    ("a//b", "invalid repository name"),
    ("a/b_", "invalid repository name"),
    ("-ab", "invalid repository name"),
    ("bad_host.io:x/img", "invalid registry host"),
    ("oci:", "no path after oci:"),
    ("oci::tag", "no path after oci:"),
    ("oci:/x:", "empty tag after the last ':'"),
    ("dir:", "no path after dir:"),
    ("docker-archive:", "no path after docker-archive:"),
    ("a/" + "b" * 260, "name longer than 255 characters"),
])
def test_image_forms_rejected(image, reason):
    with pytest.raises(ValueError) as caught:
        check_image(image)
    assert str(caught.value) == reason


# ---- CF-1 layering -------------------------------------------------------------------------

def test_defaults_fill_every_table():
    assert "command" not in DEFAULTS["agent"]
    table = validate({"agent": {"command": "claude"}})
    expected = copy.deepcopy(DEFAULTS)
    expected["agent"]["command"] = "claude"
    assert table == expected
    assert set(table) == set(coopfile.SCHEMA)


def test_validate_does_not_mutate_its_input_or_the_defaults():
    before = copy.deepcopy(DEFAULTS)
    given_table = {"agent": {"command": "x"}, "env": {"A": "1"}, "session": {"persist": ["a"]}}
    snapshot = copy.deepcopy(given_table)
    table = validate(given_table)
    table["session"]["persist"].append("b")
    table["env"]["B"] = "2"
    assert given_table == snapshot and DEFAULTS == before


def test_validate_accepts_its_own_output():
    table = validate({"agent": {"command": "x"}, "limits": {"memory": "1G"}})
    assert validate(table) == table


def test_layers_merge_global_then_project_then_overrides(workspace, tmp_path):
    global_file = write(tmp_path / "config" / "coop" / "default.toml", """
        [agent]
        command = "claude"
        args = ["--a", "--b"]
        [env]
        TERM = "dumb"
        FROM_GLOBAL = "g"
        SHARED = "global"
        [packages]
        apk = ["git", "curl"]
        pip = ["httpx"]
        [network]
        mode = "proxy"
        allow = ["a.org", "b.org"]
        [session]
        persist = [".claude", ".config"]
    """.replace("        ", ""))
    project = write(workspace / "coop.toml", """
        [agent]
        args = ["--c"]
        [env]
        SHARED = "project"
        [packages]
        apk = ["bash"]
        [network]
        allow = ["c.org"]
    """.replace("        ", ""))
    loaded = load(workspace=str(workspace), overrides={"agent": {"command": "bash"}}, host_env={})
    table = loaded.table
    assert loaded.sources == [str(global_file), str(project)]
    assert table["agent"] == {"command": "bash", "args": ["--c"], "install": ""}
    assert table["env"] == {"TERM": "dumb", "FROM_GLOBAL": "g", "SHARED": "project"}
    assert table["packages"] == {"apk": ["bash"], "pip": ["httpx"]}  # by key, lists whole
    assert table["network"] == {"mode": "proxy", "allow": ["c.org"]}  # list replaced whole
    assert table["session"]["persist"] == [".claude", ".config"]
    assert table["session"]["auto_restart"] is True  # default kept
    assert loaded.warnings == []


def test_missing_default_files_are_fine_and_overrides_suffice(workspace):
    loaded = load(workspace=str(workspace), overrides={"agent": {"command": "bash"}}, host_env={})
    assert loaded.sources == []
    assert agent_argv(loaded.table) == ["bash"]


def test_explicit_project_file_must_exist(workspace):
    missing = workspace / "other.toml"
    with pytest.raises(CoopfileError, match=r"^other\.toml: no such file$"):
        load(workspace=str(workspace), project_path=str(missing), host_env={})


def test_explicit_global_file_must_exist(workspace, tmp_path):
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(CoopfileError, match=f"^{re.escape(str(missing))}: no such file$"):
        load(workspace=str(workspace), global_path=str(missing), host_env={})


def test_explicit_files_replace_the_default_locations(workspace, tmp_path):
    write(workspace / "coop.toml", '[agent]\ncommand = "ignored"\n')
    write(tmp_path / "config" / "coop" / "default.toml", '[agent]\ncommand = "ignored"\n')
    chosen_global = write(tmp_path / "g.toml", '[agent]\ncommand = "g"\nargs = ["1"]\n')
    chosen = write(tmp_path / "p.toml", '[agent]\ncommand = "p"\n')
    loaded = load(workspace=str(workspace), global_path=str(chosen_global),
                  project_path=str(chosen), host_env={})
    assert loaded.sources == [str(chosen_global), str(chosen)]
    assert agent_argv(loaded.table) == ["p", "1"]


@pytest.mark.parametrize("image, expected", [
    ("oci:img", "oci:{ws}/img"), ("oci:./img:3.20", "oci:{ws}/img:3.20"),
    ("docker-archive:../a.tar", "docker-archive:{parent}/a.tar"), ("dir:root/", "dir:{ws}/root"),
    ("dir:/srv/root", "dir:/srv/root"), ("alpine:3.20", "alpine:3.20"), ("host", "host"),
])
def test_relative_image_paths_are_relative_to_the_coopfile(workspace, monkeypatch, tmp_path,
                                                           image, expected):
    monkeypatch.chdir(tmp_path)  # never the process's cwd
    write(workspace / "coop.toml", AGENT + f'[base]\nimage = "{image}"\n')
    loaded = load(workspace=str(workspace), host_env={})
    assert loaded.table["base"]["image"] == expected.format(ws=workspace, parent=tmp_path)


def test_relative_image_path_of_an_explicit_file_is_relative_to_that_file(workspace, tmp_path):
    other = write(tmp_path / "elsewhere" / "c.toml", AGENT + '[base]\nimage = "oci:img:v1"\n')
    table = load(workspace=str(workspace), project_path=str(other), host_env={}).table
    assert table["base"]["image"] == f"oci:{tmp_path}/elsewhere/img:v1"


def test_errors_name_the_layer_the_value_came_from(workspace, tmp_path):
    global_file = write(tmp_path / "config" / "coop" / "default.toml",
                        AGENT + "[session]\nrecord = 1\n")
    with pytest.raises(CoopfileError) as caught:
        load(workspace=str(workspace), host_env={})
    assert str(caught.value) == f"{global_file}: [session].record: expected true or false; got 1"
    write(global_file, AGENT)
    with pytest.raises(CoopfileError, match=r'^command line: \[network\]\.mode: expected one of'):
        load(workspace=str(workspace), overrides={"network": {"mode": "x"}}, host_env={})


def test_missing_agent_command_lists_the_layers(workspace, tmp_path):
    global_file = write(tmp_path / "config" / "coop" / "default.toml", "[network]\nmode = 'none'\n")
    message = project_error(workspace, "[agent]\nargs = ['-v']\n")
    assert message == (f"no [agent].command in any layer (built-in defaults, {global_file}, "
                       "coop.toml); set one in coop.toml or pass --agent")
    with pytest.raises(CoopfileError, match=r"^client: no \[agent\]\.command; set one in "
                                            r"coop\.toml or pass --agent$"):
        validate({"agent": {"args": []}}, "client")


def test_unreadable_file_is_an_error(workspace):
    (workspace / "coop.toml").mkdir()
    with pytest.raises(CoopfileError, match=r"^coop\.toml: cannot read \(Is a directory\)$"):
        load(workspace=str(workspace), host_env={})


# ---- CF-3 warnings -------------------------------------------------------------------------

def test_warnings_for_unset_names_and_unknown_managers(workspace):
    write(workspace / "coop.toml", AGENT + """
[env]
API_KEY = "$MY_API_KEY"
PRESENT = "$HOME_DIR"
LITERAL = "$$NOT_A_REF"
[packages]
apkk = ["x"]
brew = ["y"]
""")
    loaded = load(workspace=str(workspace), host_env={"HOME_DIR": "/home/u"})
    assert loaded.warnings == [
        "coop.toml: [packages].apkk: unknown package manager; did you mean apk?",
        "coop.toml: [packages].brew: unknown package manager; known: apk, apt, apt-get, dnf, "
        "yum, pacman, pip, npm",
        "coop.toml: [env].API_KEY: $MY_API_KEY is not set on the host; API_KEY will be left out",
    ]
    assert "/home/u" not in " ".join(loaded.warnings)
    assert loaded.table["env"]["PRESENT"] == "$HOME_DIR"  # unexpanded (CF-4)


def test_overridden_reference_does_not_warn(workspace, tmp_path):
    write(tmp_path / "config" / "coop" / "default.toml", AGENT + '[env]\nK = "$UNSET_NAME"\n')
    write(workspace / "coop.toml", '[env]\nK = "literal"\n')
    assert load(workspace=str(workspace), host_env={}).warnings == []


def test_host_env_defaults_to_os_environ(workspace, monkeypatch):
    write(workspace / "coop.toml", AGENT + '[env]\nK = "$COOP_TEST_NAME"\n')
    monkeypatch.setenv("COOP_TEST_NAME", "v")
    assert load(workspace=str(workspace)).warnings == []
    monkeypatch.delenv("COOP_TEST_NAME")
    assert len(load(workspace=str(workspace)).warnings) == 1


# ---- CF-4 expansion ------------------------------------------------------------------------

def test_expand_env():
    env = {"TERM": "xterm", "KEY": "$HOST_KEY", "GONE": "$UNSET", "PRICE": "$$5", "MID": "a$b",
           "DOUBLE": "$$HOST_KEY"}
    assert expand_env(env, {"HOST_KEY": "s3cr3t"}) == {
        "TERM": "xterm", "KEY": "s3cr3t", "PRICE": "$5", "MID": "a$b", "DOUBLE": "$HOST_KEY"}
    assert expand_env({}, {}) == {}


def test_agent_argv_splits_the_command():
    table = validate({"agent": {"command": "python3 -q 'a b'", "args": ["--x", "y z"]}})
    assert agent_argv(table) == ["python3", "-q", "a b", "--x", "y z"]


# ---- CF-5 build hash -----------------------------------------------------------------------

def table_with(**tables) -> dict:
    raw = {"agent": {"command": "claude"}}
    for name, body in tables.items():
        raw.setdefault(name, {}).update(body)
    return validate(raw)


def test_build_hash_is_stable_and_canonical():
    one = table_with(packages={"apk": ["git"], "pip": ["x"]})
    two = table_with(packages={"pip": ["x"], "apk": ["git"]})
    assert build_hash(one) == build_hash(two) == build_hash(copy.deepcopy(one))
    assert re.fullmatch(r"[0-9a-f]{64}", build_hash(one))
    assert build_hash(table_with()) == build_hash(table_with(packages={"apk": []}))


@pytest.mark.parametrize("change", [
    {"packages": {"apk": ["git"]}}, {"base": {"image": "alpine:3.20"}},
    {"setup": {"run": ["echo hi"]}}, {"agent": {"install": "npm i -g x"}},
])
def test_build_hash_changes_with_build_tables(change):
    assert build_hash(table_with(**change)) != build_hash(table_with())


@pytest.mark.parametrize("change", [
    {"env": {"K": "v"}}, {"network": {"mode": "none"}}, {"session": {"record": True}},
    {"agent": {"command": "aider", "args": ["-v"]}}, {"limits": {"pids": 5}},
    {"input_filter": {"ctrl_c_debounce_ms": 1}},
])
def test_build_hash_ignores_runtime_tables(change):
    assert build_hash(table_with(**change)) == build_hash(table_with())


def test_needs_build():
    assert not needs_build(table_with())
    assert not needs_build(table_with(packages={"apk": []}, agent={"install": "  "}))
    assert needs_build(table_with(base={"image": "alpine"}))
    assert needs_build(table_with(base={"image": "dir:/srv/root"}))
    assert needs_build(table_with(packages={"apt": ["git"]}))
    assert needs_build(table_with(setup={"run": ["true"]}))
    assert needs_build(table_with(agent={"install": "curl x | sh"}))


# ---- robustness ----------------------------------------------------------------------------

NAMES = sorted(set(coopfile.SCHEMA) | {k for keys in coopfile.SCHEMA.values() for k in keys}
               | set(coopfile.KNOWN_MANAGERS) | {"TERM", "A B", ""})
leaves = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
          | st.sampled_from(["host", "alpine:3.20", "Alpine", "4G", "veth", "$HOME", "$$x", "$",
                             "../x", "/abs", "*.example.org", "'x", "\0", "-1"]))
keys = st.sampled_from(NAMES) | st.text(max_size=4) | st.integers(-2, 2)
junk = st.recursive(leaves, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(keys, inner, max_size=3), max_leaves=10)
shaped = st.dictionaries(st.sampled_from(sorted(coopfile.SCHEMA)),
                         st.dictionaries(keys, junk, max_size=3), max_size=4)
nearly_valid = st.fixed_dictionaries({}, optional={
    name: st.dictionaries(st.sampled_from(sorted(known) or NAMES), leaves | st.lists(leaves),
                          max_size=3)
    for name, known in coopfile.SCHEMA.items()
}).map(lambda table: {**table, "agent": {"command": "x", **table.get("agent", {})}})


@pytest.mark.slow
@fuzz(2000)
@given(st.one_of(junk, shaped, nearly_valid))
def test_validate_on_junk_only_raises_coopfile_error(table):
    try:
        result = validate(table)
    except CoopfileError as error:
        assert "\n" not in str(error)
    else:
        assert set(result) == set(coopfile.SCHEMA)
        assert validate(result) == result


toml_ish = st.lists(st.sampled_from(
    ["[agent]", "[env]", "[network]", "[[x]]", "command", "=", '"', "'", "[", "]", "{", "}", ",",
     "\n", " ", "mode", "1", "-1", "true", '"veth"', '"$A"', "\\u0003", "#", ".", "x", "\xff"]),
    max_size=30).map(lambda parts: "".join(parts).encode("utf-8", "surrogatepass"))


@pytest.mark.slow
@settings(fuzz(2000), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200) | toml_ish)
def test_load_on_random_bytes_only_raises_coopfile_error(workspace, data):
    (workspace / "coop.toml").write_bytes(data)
    try:
        loaded = load(workspace=str(workspace), overrides={"agent": {"command": "sh"}},
                      host_env={})
    except CoopfileError as error:
        assert "\n" not in str(error)
    else:
        assert validate(loaded.table) == loaded.table
