// The connect page (TUN-1, TUN-3, TUN-6): `…/connect#<offer>` from `coop tunnel`.
//
// The offer travels in the URL fragment, which the browser never sends to a
// server. The page answers it with its own RTCPeerConnection (no ICE servers:
// the offer carries the daemon's candidates and the daemon finds the browser
// peer-reflexively), then returns the answer: posted to the `coop serve` that
// served this page, with the tunnel's one-time secret, or else shown as a
// short code for the `coop tunnel` prompt. Once `coop-control` opens, the
// normal page runs on an RtcTransport. Without a fragment: the dashboard of
// machines reached before.

import {decodeOffer, encodeAnswer} from "./envelope.js";
import {RtcTransport} from "./rtc.js";
import {ConnectScreen} from "./connectscreen.js";
import {knownMachines, rememberMachine, forgetMachine} from "./machines.js";
import {prefs} from "./prefs.js";

const GATHER_MS = 2000; // host candidates only: gathering is quick, and optional
const POST_MS = 5000; // a coop serve takes the answer in milliseconds
const CONNECT_MS = 5 * 60000; // TUN-5: the daemon gives up on the offer after 5 minutes
const SEEN_EVERY_MS = 30000;
const ADVICE = "try `coop serve` on the LAN, or forward a port";

/** The connected tunnel's transport; shows the dashboard (and waits for a pasted
 *  link) until a connection is made. */
export function connect() {
  document.documentElement.dataset.theme = prefs.theme;
  return new Promise((resolve) => {
    let busy = false;
    const screen = dashboard((code) => attempt(code));
    async function attempt(code) {
      if (busy) return;
      busy = true;
      try {
        const transport = await answerOffer(code, screen);
        screen.remove();
        resolve(transport);
      } catch (err) {
        screen.hideAnswer();
        screen.status(err.message, "error");
      } finally {
        busy = false;
      }
    }
    const fragment = window.location.hash.slice(1);
    // the offer is single-use: a reload shows the dashboard instead of a stale offer
    history.replaceState(null, "", window.location.pathname + window.location.search);
    if (fragment) attempt(fragment);
    else screen.status("Run `coop tunnel` on a computer and scan its code (or paste its link below).");
  });
}

/** A connect screen listing the known machines; connect(code) takes a pasted link. */
function dashboard(connect) {
  const screen = new ConnectScreen({
    connect,
    forget: (machineId) => {
      forgetMachine(machineId);
      screen.machines(knownMachines());
    },
  });
  screen.machines(knownMachines());
  return screen;
}

async function answerOffer(code, screen) {
  let offer;
  try {
    offer = await decodeOffer(code);
  } catch (err) {
    throw new Error(`This connect link cannot be used (${err.message}). Run \`coop tunnel\` again for a new one.`);
  }
  const host = offer.hostname;
  screen.status(`Connecting to ${host}…`, "busy");
  const pc = new RTCPeerConnection({iceServers: []});
  try {
    const opened = controlChannel(pc, host);
    await pc.setRemoteDescription({type: "offer", sdp: offer.sdp});
    await pc.setLocalDescription(await pc.createAnswer());
    await gathered(pc);
    const answer = await encodeAnswer(pc.localDescription.sdp);
    const answered = performance.now();
    if (await postAnswer(answer, offer.secret)) {
      screen.status(`Answer sent to ${host}; connecting…`, "busy");
    } else {
      screen.showAnswer(answer, host);
      screen.status(`Waiting for the code to be pasted on ${host}…`, "busy");
    }
    const control = await within(opened, CONNECT_MS,
      `No connection to ${host} within 5 minutes: run \`coop tunnel\` again and scan the new code.`);
    const transport = new RtcTransport(pc, control);
    Object.assign(transport.timing, {answered, connected: performance.now()});
    transport.machine = {machineId: offer.machineId, hostname: host};
    keepSeen(pc, control, transport.machine);
    document.title = `coop · ${host}`;
    return transport;
  } catch (err) {
    pc.close();
    throw err;
  }
}

/** Resolves with `coop-control` once open; rejects when ICE fails or the peer closes. */
function controlChannel(pc, host) {
  return new Promise((resolve, reject) => {
    pc.addEventListener("datachannel", ({channel}) => {
      if (channel.label !== "coop-control") return;
      channel.binaryType = "arraybuffer";
      if (channel.readyState === "open") resolve(channel);
      else channel.addEventListener("open", () => resolve(channel), {once: true});
    });
    pc.addEventListener("connectionstatechange", () => {
      if (pc.connectionState === "failed") reject(new Error(`No network path to ${host}: ${ADVICE}.`));
      else if (pc.connectionState === "closed") reject(new Error(`${host} closed the tunnel.`));
    });
  });
}

function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => pc.iceGatheringState === "complete" && resolve();
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, GATHER_MS);
  });
}

function within(promise, ms, message) {
  let timer;
  const late = new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(message)), ms)));
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** TUN-3, automatic return: the `coop serve` that served this page takes the answer
 *  when the secret matches a waiting tunnel. False on a static site or any refusal. */
async function postAnswer(answer, secret) {
  if (!/^https?:$/.test(window.location.protocol)) return false;
  const root = new URL(window.location.pathname.endsWith("/") ? ".." : ".", window.location.href);
  try {
    const response = await fetch(new URL("api/tunnel/answer", root), {
      method: "POST", credentials: "omit", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({answer, secret}),
      signal: AbortSignal.timeout(POST_MS), // a host that never answers must not hide the code
    });
    return response.ok;
  } catch {
    return false;
  }
}

/** TUN-6: the machine's "last seen" follows the connection; its end brings the dashboard back. */
function keepSeen(pc, control, {machineId, hostname}) {
  const seen = () => rememberMachine(machineId, hostname);
  seen();
  const timer = setInterval(seen, SEEN_EVERY_MS);
  let over = false;
  const end = () => {
    if (over) return;
    over = true;
    clearInterval(timer);
    seen();
    const screen = dashboard((code) => {
      window.location.hash = code.slice(code.lastIndexOf("#") + 1);
      window.location.reload();
    });
    screen.status(`The tunnel to ${hostname} closed. Run \`coop tunnel\` there and scan the new code.`, "error");
  };
  control.addEventListener("close", end);
  pc.addEventListener("connectionstatechange", () => ["failed", "closed"].includes(pc.connectionState) && end());
  window.addEventListener("pagehide", () => pc.close()); // the daemon learns at once that we left
}
