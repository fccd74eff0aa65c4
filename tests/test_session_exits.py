"""A spawned process can exit before spawn() returns to the session (the init's
exit report and its spawn reply may arrive in one read): the exit must not be
lost. A launcher that reports the exit first makes the order deterministic."""

import asyncio
import os

from coop import coopfile
from coop.actors.session import Session
from coop.launcher import HostLauncher, PtyChild
from coop.paths import Paths


class ExitsFirst(HostLauncher):
    """The real host launcher, except that each exit is reported before spawn returns."""

    async def spawn(self, argv, env, cwd, cols, rows) -> PtyChild:
        child = await super().spawn(["true"], env, cwd, cols, rows)
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # it has exited...
        self._reap(child.pid)  # ...and the launcher reports it now, before returning
        return child


def test_exit_reported_before_spawn_returns_is_delivered(tmp_path):
    table = coopfile.validate({"agent": {"command": "true"}, "session": {"auto_restart": False}})

    async def scenario():
        session = Session(Paths(tmp_path, tmp_path / "sock"), "early", str(tmp_path), table, 0,
                          ExitsFirst(str(tmp_path)))
        await session.start()
        agent = session.consoles[0]
        assert agent.state == "exited" and agent.exit_code == 0
        assert session.info()["state"] == "exited"

    asyncio.run(scenario())
