// Live progress on the training pages. While a run is queued or running, the page polls the JSON API
// every two seconds and updates states, progress bars, the status line, the log tail and (on a run's
// page) the curves; it slows down while nothing runs and stops while the tab is hidden.
//
// Everything that comes from the engine (log tails, errors) goes in with textContent. The curves are
// SVG drawn and escaped by the server (GET /runs/<id>/curves/), swapped in as parsed nodes.

import { NetworkError, getJSON } from "./net.js";

const ACTIVE = new Set(["queued", "running"]);
const FAST_MS = 2000;
const IDLE_MS = 15000;
const kindLabels = JSON.parse(document.getElementById("kind-labels")?.textContent || "{}");
const stateLabel = (s) => s.charAt(0).toUpperCase() + s.slice(1);
const kindLabel = (k) => kindLabels[k] || k;

/** 0…1 and the sentence beside it: the API's ``progress`` and ``status``, which TrainingRun.progress and
 * TrainingRun.status_text compute, the same the server rendered into the page. Nothing is worked out here. */
export function progressOf(run) {
  return run.progress ?? 0;
}

/** Put a run's state, progress and status into the element holding data-field children. */
function paint(el, run) {
  const pct = Math.round(100 * progressOf(run));
  el.dataset.state = run.state;
  const state = el.querySelector("[data-field=state]");
  if (state) {
    state.textContent = stateLabel(run.state);
    state.className = `state state-${run.state}`;
  }
  const bar = el.querySelector("[data-field=progress]");
  if (bar) {
    bar.value = pct;
    bar.textContent = `${pct}%`;
  }
  const status = el.querySelector("[data-field=status]");
  if (status) status.textContent = run.status ?? "";
}

function runUrl(template, id) {
  return template.replace(/\/0\/$/, `/${id}/`);
}

/** Poll ``tick`` (which answers whether anything is still active) at the right pace. */
function poll(tick) {
  let timer = null;
  const schedule = (ms) => {
    clearTimeout(timer);
    timer = setTimeout(run, ms);
  };
  async function run() {
    if (document.hidden) return; // visibilitychange restarts it
    let active = true;
    try {
      active = await tick();
    } catch (err) {
      if (!(err instanceof NetworkError)) throw err;
    }
    schedule(active ? FAST_MS : IDLE_MS);
  }
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) schedule(0);
  });
  schedule(FAST_MS);
}

// --- the training page: the runs table -------------------------------------------------------------

function trainingPage(table) {
  const live = document.getElementById("runs-live");
  const newRuns = document.getElementById("runs-new");
  const rows = () => [...table.querySelectorAll("tbody tr[data-run-id]")];

  async function tick() {
    const active = rows().filter((r) => ACTIVE.has(r.dataset.state));
    const list = await getJSON(table.dataset.api);
    if (!list.ok) return active.length > 0;
    const known = new Set(rows().map((r) => r.dataset.runId));
    if (list.data.some((run) => !known.has(String(run.id)))) newRuns.hidden = false;
    let stillActive = false;
    for (const summary of list.data) {
      const row = document.getElementById(`run-${summary.id}`);
      if (!row) continue;
      const before = row.dataset.state;
      if (!ACTIVE.has(before) && !ACTIVE.has(summary.state)) continue;
      // A round's detail also names the versions its steps produced.
      const detail = summary.kind === "round" ? await getJSON(runUrl(table.dataset.apiRun, summary.id)) : null;
      const run = detail?.ok ? detail.data : summary;
      paint(row, run);
      if (ACTIVE.has(run.state)) stillActive = true;
      if (before !== run.state) live.textContent = `${kindLabel(run.kind)} #${run.id}: ${run.state}.`;
      const produced = [...(run.versions || []), ...(run.steps || []).flatMap((s) => s.versions || [])];
      if (!ACTIVE.has(run.state) && produced.length) {
        const cell = row.querySelector("[data-field=versions]");
        const base = document.querySelector("a[href$='/training/versions/']")?.getAttribute("href") || "versions/";
        cell.replaceChildren(
          ...produced.flatMap((label, i) => {
            const a = document.createElement("a");
            a.href = `${base}#v-${label.toLowerCase().replace(/[^a-z0-9_-]+/g, "-")}`;
            a.textContent = label;
            return i ? [document.createTextNode(", "), a] : [a];
          }),
        );
      }
    }
    return stillActive;
  }
  poll(tick);
}

// --- a run's page: header, steps, log tail, curves ----------------------------------------------------

function runPage(root) {
  const apiRun = root.dataset.apiRun;
  const logTail = document.getElementById("log-tail");
  const logOf = document.getElementById("log-of");
  let curvesKey = "";

  function logSource(run) {
    if (run.kind !== "round") return run;
    const steps = [...run.steps].sort((a, b) => a.position - b.position);
    return (
      steps.find((s) => s.state === "running") ||
      steps.find((s) => s.state === "failed") ||
      [...steps].reverse().find((s) => s.state === "succeeded") ||
      null
    );
  }

  async function refreshCurves(key) {
    if (key === curvesKey) return;
    curvesKey = key;
    const response = await fetch(root.dataset.curves, { credentials: "same-origin" });
    if (!response.ok) return;
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    document.getElementById("curves").replaceChildren(...[...doc.body.childNodes].map((n) => document.importNode(n, true)));
  }

  async function tick() {
    const wasActive = ACTIVE.has(root.dataset.state);
    const response = await getJSON(root.dataset.api);
    if (!response.ok) return wasActive;
    const run = response.data;
    paint(root.querySelector(".run-head"), run);
    root.dataset.state = run.state;
    for (const step of run.steps || []) {
      const row = root.querySelector(`#steps-table tr[data-run-id="${step.id}"]`);
      if (row) paint(row, step);
    }
    const errorBox = document.getElementById("run-error-box");
    if (run.error) {
      document.getElementById("run-error").textContent = run.error;
      errorBox.hidden = false;
    }
    const source = logSource(run);
    const detail = source && source.id !== run.id ? await getJSON(runUrl(apiRun, source.id)) : { ok: true, data: run };
    if (detail.ok && detail.data) {
      const d = detail.data;
      const atBottom = logTail.scrollHeight - logTail.scrollTop - logTail.clientHeight < 20;
      logTail.textContent = d.log_tail || "";
      if (atBottom) logTail.scrollTop = logTail.scrollHeight;
      document.getElementById("log-empty")?.toggleAttribute("hidden", Boolean(d.log_tail));
      if (logOf) logOf.textContent = d.id !== run.id ? `of step ${d.position}, ${kindLabel(d.kind)}` : "";
      const last = (d.metrics || []).at(-1);
      await refreshCurves(`${d.id}:${(d.metrics || []).length}:${last?.step ?? ""}`);
    }
    if (wasActive && !ACTIVE.has(run.state)) {
      // Finished: reload once for what only the server renders (new versions, results, actions).
      window.location.reload();
      return false;
    }
    return ACTIVE.has(run.state);
  }
  logTail.scrollTop = logTail.scrollHeight; // the newest lines are the ones people look for
  if (ACTIVE.has(root.dataset.state)) {
    curvesKey = "initial";
    poll(tick);
  }
}

const table = document.getElementById("runs-table");
if (table) trainingPage(table);
const runRoot = document.getElementById("run-page");
if (runRoot) runPage(runRoot);
