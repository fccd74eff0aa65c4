import pytest

from tests.daemon import Coop


@pytest.fixture
def coop(tmp_path):
    """A real daemon on a temporary HOME, sessions on the host launcher."""
    c = Coop(tmp_path)
    try:
        yield c
    finally:
        c.cleanup()


@pytest.fixture
def sandboxed_coop(tmp_path):
    """A real daemon whose sessions run in the real sandbox."""
    c = Coop(tmp_path, sandboxed=True)
    try:
        yield c
    finally:
        c.cleanup()
