// TUN-6: the machines this browser has reached through a tunnel, kept in
// localStorage (machine id, hostname, last seen) for the connect page's
// dashboard. Nothing secret: an old offer cannot be used again.

const KEY = "coop.machines.v1";
const MAX_MACHINES = 50;

/** Known machines, most recently seen first: [{machineId, hostname, lastSeen (ms)}]. */
export function knownMachines() {
  let saved;
  try {
    saved = JSON.parse(localStorage.getItem(KEY) || "[]");
  } catch {
    return [];
  }
  if (!Array.isArray(saved)) return [];
  return saved
    .filter((m) => m && typeof m.machineId === "string" && typeof m.hostname === "string" && Number.isFinite(m.lastSeen))
    .sort((a, b) => b.lastSeen - a.lastSeen);
}

/** Record that the machine is connected now (or was, until now). */
export function rememberMachine(machineId, hostname, now = Date.now()) {
  const others = knownMachines().filter((m) => m.machineId !== machineId);
  save([{machineId, hostname, lastSeen: now}, ...others].slice(0, MAX_MACHINES));
}

export function forgetMachine(machineId) {
  save(knownMachines().filter((m) => m.machineId !== machineId));
}

function save(machines) {
  try {
    localStorage.setItem(KEY, JSON.stringify(machines));
  } catch {
    // private mode or full storage: the dashboard just forgets
  }
}
