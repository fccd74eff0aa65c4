"""Fuzz budgets shared by the property tests of every sans-I/O parser (SEC-4).

CI runs each fuzz test for ``CI_EXAMPLES`` cases with a fixed seed, so a red run
repeats exactly. ``COOP_FUZZ_EXAMPLES=N`` runs N cases per fuzz test instead,
with a fresh random seed, so a long local run explores past CI's examples; a
failure prints what to pass back (``--hypothesis-seed=…``) to repeat it.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

CI_EXAMPLES = 10_000


def fuzz(examples: int = CI_EXAMPLES) -> settings:
    """Hypothesis settings for one fuzz test: ``examples`` cases in CI, or the local override."""
    local = os.environ.get("COOP_FUZZ_EXAMPLES")
    return settings(
        max_examples=int(local) if local else examples,
        derandomize=not local,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much],
    )


class Recipe:
    """Structured input decoded from one ``st.binary()`` draw.

    Drawing plain bytes is several times cheaper than composite strategies,
    which is what lets 10,000 structured cases run in seconds; each choice
    consumes one byte and an exhausted recipe keeps choosing the first option.
    """

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def pick(self, n: int) -> int:
        return self.byte() % n

    def choice(self, options):
        return options[self.pick(len(options))]

    def chance(self, one_in: int) -> bool:
        """True once in ``one_in`` draws; never once the recipe is used up."""
        return self.pick(one_in) == one_in - 1

    def text(self, alphabet: str = "aZ0 :/._-@\\\"\n\x00é", most: int = 12) -> str:
        return "".join(self.choice(alphabet) for _ in range(self.pick(most + 1)))

    def json(self, leaves=(None, True, 0, -1, 2 ** 64, 1.5, "", "x"), keys=("a", ""),
             depth: int = 3):
        """An arbitrary JSON value built from ``leaves`` and ``keys``."""
        kind = self.pick(8) if depth else 0
        if kind == 6:
            return [self.json(leaves, keys, depth - 1) for _ in range(self.pick(4))]
        if kind == 7:
            return {self.choice(keys): self.json(leaves, keys, depth - 1)
                    for _ in range(self.pick(4))}
        if kind == 5:
            return self.text()
        return self.choice(leaves)

    def mangle(self, data: bytes, edits: int = 3) -> bytes:
        """``data`` with up to ``edits`` byte-level edits: cut, flip, duplicate or insert."""
        out = bytearray(data)
        for _ in range(self.pick(edits + 1)):
            at = (self.byte() << 8 | self.byte()) % (len(out) + 1)
            kind = self.pick(4)
            if kind == 0:
                del out[at:]
            elif kind == 1 and at < len(out):
                out[at] = self.byte()
            elif kind == 2:
                out[at:at] = out[at:at + self.pick(16) + 1]
            else:
                out[at:at] = self.choice([b"\"", b"{", b"[", b"]", b"}", b",", b":", b"\\", b"\xff"])
        return bytes(out)
