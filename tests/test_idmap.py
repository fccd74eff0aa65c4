"""SB-1, IMG-4: which ids a build step's user namespace maps (sans I/O)."""

from coop.sandbox import idmap
from coop.sandbox.idmap import FULL_RANGE, IdMap

SUBUID = "# comment\nalice:100000:65536\n1001:200000:1000\nbroken:x:1\nbob:300000:0\n"


def test_subordinate_range_by_name_or_uid():
    assert idmap.subordinate_range(SUBUID, "alice", 1000) == (100000, 65536)
    assert idmap.subordinate_range(SUBUID, "carol", 1001) == (200000, 1000)
    assert idmap.subordinate_range(SUBUID, "broken", 5) is None
    assert idmap.subordinate_range(SUBUID, "bob", 6) is None  # an empty range is none
    assert idmap.subordinate_range("", "alice", 1000) is None


def test_root_maps_every_id_onto_itself_from_the_parent_namespace():
    ids = idmap.for_build(0, 0, "root", "", "", helpers_installed=False)
    assert ids.uids == ids.gids == ((0, 0, FULL_RANGE),)
    assert ids.by_parent and not ids.helpers and not ids.deny_setgroups
    assert ids.describe() == "every uid mapped to itself"


def test_user_with_a_range_and_the_helpers_gets_it_through_newuidmap():
    ids = idmap.for_build(1000, 1000, "alice", SUBUID, SUBUID, helpers_installed=True)
    assert ids.uids == ((0, 1000, 1), (1, 100000, 65536))
    assert ids.by_parent and ids.helpers and not ids.deny_setgroups
    assert ids.helper_argv(42) == [
        ["newuidmap", "42", "0", "1000", "1", "1", "100000", "65536"],
        ["newgidmap", "42", "0", "1000", "1", "1", "100000", "65536"]]
    assert ids.table(ids.uids) == "0 1000 1\n1 100000 65536\n"
    assert ids.describe() == "root inside = uid 1000 outside, uids 1-65536 = a subordinate range"


def test_fallback_is_the_single_mapping_written_by_the_namespace_itself():
    single = IdMap(((0, 1000, 1),), ((0, 1000, 1),))
    assert idmap.for_build(1000, 1000, "alice", SUBUID, SUBUID, False) == single  # no helpers
    assert idmap.for_build(1000, 1000, "alice", SUBUID, "", True) == single  # no gid range
    assert idmap.for_build(1000, 1000, "dave", SUBUID, SUBUID, True) == single  # no entry
    assert not single.by_parent and single.deny_setgroups
    assert single.describe() == "root inside = uid 1000 outside"
