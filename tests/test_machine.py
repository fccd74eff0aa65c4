"""The machine id kept in ~/.coop/machine_id (TUN-2)."""

import os
import stat

from coop.machine import machine_id
from coop.paths import Paths


def paths_in(tmp_path) -> Paths:
    return Paths(state=tmp_path / ".coop", socket=tmp_path / ".coop" / "sock")


def test_created_once_private_and_stable(tmp_path):
    paths = paths_in(tmp_path)
    first = machine_id(paths)
    assert len(first) == 16 and int(first, 16) >= 0
    assert stat.S_IMODE(os.stat(paths.machine_id).st_mode) == 0o600
    assert machine_id(paths) == first
    assert machine_id(paths_in(tmp_path / "other")) != first


def test_a_damaged_file_is_replaced(tmp_path):
    paths = paths_in(tmp_path)
    paths.ensure_state()
    paths.machine_id.write_text("not an id\n")
    new = machine_id(paths)
    assert paths.machine_id.read_text() == new + "\n"
