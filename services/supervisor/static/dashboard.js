// The supervisor's dashboard: /status every second, and the restart and drain buttons.
// The buttons call the admin API; when it answers 401 the page asks once for the admin
// token (HARK_ADMIN_TOKEN) and keeps it for this tab only.
"use strict";

const REFRESH_MS = 1000;
const body = document.querySelector("#actors tbody");
const message = document.getElementById("message");

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "-" : String(text);
  if (cls) td.className = cls;
  return td;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 60) return seconds.toFixed(1) + "s";
  const m = Math.floor(seconds / 60), h = Math.floor(m / 60);
  return h ? `${h}h${String(m % 60).padStart(2, "0")}m` : `${m}m${String(Math.floor(seconds % 60)).padStart(2, "0")}s`;
}

function button(label, onClick) {
  const b = document.createElement("button");
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
}

async function act(method, path, what) {
  message.textContent = `${what}…`;
  for (let attempt = 0; attempt < 2; attempt++) {
    const headers = {};
    const token = sessionStorage.getItem("harkAdminToken");
    if (token) headers["Authorization"] = `Bearer ${token}`;
    const resp = await fetch(path, { method, headers });
    if (resp.status === 401 && attempt === 0) {
      const given = prompt("Admin token (HARK_ADMIN_TOKEN):");
      if (!given) break;
      sessionStorage.setItem("harkAdminToken", given);
      continue;
    }
    if (resp.ok) {
      message.textContent = `${what}: done`;
    } else {
      let reason = `${resp.status} ${resp.statusText}`;
      try { reason = (await resp.json()).error || reason; } catch (e) { /* not JSON */ }
      message.textContent = `${what}: ${reason}`;
    }
    break;
  }
  refresh();
}

function row(actor) {
  const tr = document.createElement("tr");
  tr.dataset.actor = actor.name;
  tr.append(cell(actor.name));
  const state = cell(actor.state, `state ${actor.state}`);
  if (actor.draining) {
    const tag = document.createElement("span");
    tag.className = "draining";
    tag.textContent = "draining";
    state.append(tag);
  }
  tr.append(state, cell(actor.pid, "num"), cell(duration(actor.uptime_s), "num"),
            cell(actor.restarts, "num restarts"), cell(actor.last_exit),
            cell(actor.heartbeat_age_s === null ? null : actor.heartbeat_age_s.toFixed(1) + "s", "num"),
            cell(actor.mailbox, "num"),
            cell(actor.lag_ms == null ? null : `${actor.lag_ms} ms`, "num"),
            cell(actor.sessions, "num"));
  const actions = document.createElement("td");
  if (actor.role !== "redis") {
    actions.append(button("restart", () =>
      act("POST", `/actors/${encodeURIComponent(actor.name)}/restart`, `restart ${actor.name}`)));
  }
  if (actor.role === "transcriber") {
    const method = actor.draining ? "DELETE" : "POST";
    actions.append(button(actor.draining ? "undrain" : "drain", () =>
      act(method, `/actors/${encodeURIComponent(actor.name)}/drain`, `drain ${actor.name}`)));
  }
  tr.append(actions);
  return tr;
}

async function refresh() {
  try {
    const resp = await fetch("/status", { cache: "no-store" });
    const report = await resp.json();
    const state = document.getElementById("tree-state");
    state.textContent = report.state;
    state.className = `state ${report.state}`;
    document.getElementById("redis").textContent = `redis ${report.redis ? "up" : "DOWN"}`;
    document.getElementById("backend").textContent = `backend ${report.backend}`;
    document.getElementById("updated").textContent = new Date().toLocaleTimeString();
    body.replaceChildren(...report.actors.map(row));
  } catch (e) {
    document.getElementById("tree-state").textContent = "supervisor unreachable";
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
