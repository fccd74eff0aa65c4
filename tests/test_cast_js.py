"""BYD-3: the page's asciicast parser and playback timeline (coop/www/cast.js), run in
Node with a hand-driven clock: no browser needed for timing logic."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.daemon import REPO

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


def run_js(body: str) -> None:
    script = f"""
import assert from "node:assert/strict";
const {{parseCast, Playback, sizeOf, CastError}} = await import({str(REPO / "coop/www/cast.js")!r});
{body}
"""
    res = subprocess.run([NODE, "--input-type=module", "-e", script], check=False, capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0, res.stderr


def test_parse_keeps_events_drops_a_half_written_tail_and_refuses_other_files():
    run_js("""
const text = '{"version": 2, "width": 80, "height": 24}\\n[0.5, "o", "a"]\\n\\n[1, "r", "100x30"]\\n'
  + '[2, "o", "b"]\\n[3, "o", "unfinish';
const cast = parseCast(text);
assert.deepEqual(cast.header, {version: 2, width: 80, height: 24});
assert.deepEqual(cast.events, [[0.5, "o", "a"], [1, "r", "100x30"], [2, "o", "b"]]);
assert.throws(() => parseCast('{"version": 1}\\n'), CastError);
assert.throws(() => parseCast("<html>"), CastError);
assert.throws(() => parseCast('{"version": 2}\\n[1, "o"\\n[2, "o", "x"]\\n'), /Line 2/);
assert.deepEqual(sizeOf("132x43"), {cols: 132, rows: 43});
assert.equal(sizeOf("132x"), null);
""")


def test_playback_hands_out_events_at_their_time_divided_by_the_speed():
    run_js("""
const events = [[0, "o", "a"], [1, "o", "b"], [3, "o", "c"], [10, "o", "d"]];
const p = new Playback(events);
assert.equal(p.duration, 10);
assert.equal(p.wait(0), null);               // paused: nothing is due, nothing to wait for
p.play(1000);
assert.deepEqual(p.due(1000), [events[0]]);
assert.equal(p.wait(1000), 1000);
assert.deepEqual(p.due(1999), []);
assert.deepEqual(p.due(2000), [events[1]]);
p.setSpeed(10, 2000);                        // 2 s of recording now take 200 ms
assert.equal(p.wait(2000), 200);
assert.deepEqual(p.due(2200), [events[2]]);
p.pause(2300);
assert.equal(p.position(9000), 4);           // time stands still while paused
assert.deepEqual(p.due(9000), []);
p.play(9000);
assert.equal(p.wait(9000), 600);
assert.deepEqual(p.due(9600), [events[3]]);
assert.ok(p.done);
assert.equal(p.position(99999), 10);         // never past the end
p.rewind(10000);
assert.equal(p.index, 0);
assert.deepEqual(p.due(10000), [events[0]]);
assert.equal(p.wait(10000), 100);            // still at 10x after the rewind
""")
