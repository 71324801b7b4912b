// The ranking page. Keyboard first: number keys pick, T ties, Backspace undoes, Enter submits,
// S skips, F flags, R rationale. Every text from the server is model output or user input and goes
// into the page with textContent, never as HTML.
//
// One HTTP surface: the page talks to the REST API (/api/…) like any other client, with the session
// cookie and Django's CSRF header; config.urls names the endpoints.
//
// No waiting: a submit (or skip) answers with the next task in the same response (?next=1), and the
// images of the tasks likely to come next (GET …/upcoming/) are downloaded and decoded while the
// annotator works, so the next task is on screen as soon as that one response arrives. How long that
// takes is recorded as standard User Timing measures ("lensloop:next-task", "lensloop:next-task-answer"),
// which bench/ui.py reads.
//
// Never losing work: when the server cannot be reached (a restarting web worker or database, a proxy's
// 502/503, a dropped connection) the page says "Reconnecting…", keeps the ranking on screen and tries
// again with backoff, with the same client_uuid, which the server is idempotent on; a ranking not yet
// sent is also kept in localStorage, so a reload brings it back. Leaving the page while its task is
// untouched gives the lease back, so the next visit gets the queue's best task, not a stale one.

import { NetworkError, csrfToken, describe, getJSON, newUUID, postJSON } from "./net.js";
import { Ranking, ordinal } from "./ranking.js";
import { Viewer } from "./viewer.js";
import { draggable } from "./dnd.js";
import { BoxOverlay, candidateColor } from "./boxes.js";

const config = JSON.parse(document.getElementById("work-config").textContent);
const $ = (id) => document.getElementById(id);
const work = $("work");
const pool = $("pool");
const rankingList = $("ranking");
const alertBox = $("alert");
const leaseBox = $("lease-warning");
const flagsBox = $("flags");
const rationale = $("rationale");
const live = $("live");
const submitBtn = $("btn-submit");
const retryBtn = $("btn-retry");

const viewer = new Viewer($("viewer"), $("task-image"), {
  onZoom: (s) => ($("zoom-level").textContent = `${Math.round(s * 100)}%`),
});
// Grounding and detection tasks: answers are boxes, drawn over the image in each candidate's colour.
const boxTask = ["grounding", "detection"].includes(work.dataset.taskType);
const overlay = boxTask ? new BoxOverlay($("viewer")) : null;
if (overlay) viewer.follow(overlay.svg);

const state = {
  task: null,
  ranking: null,
  uuid: null,
  shownAt: 0,
  busy: false,
  sending: false, // a submit is waiting for the server: the ranking is frozen until it answers
  retryNow: null, // while waiting to try again after a failure: call to try at once
  released: null, // the task whose lease this page gave back when it was hidden
  lost: false, // the server refused this task for good (409): only "next task" helps
  focusGroup: 0,
  leaseEnds: 0,
  leaseSeconds: config.leaseMinutes * 60,
};
const prefetched = new Map(); // image URL → decoded <img>, the few most likely next

const url = (name, id) => config.urls[name].replace("/0/", `/${id}/`);

// --- the unsent ranking, kept in this browser ---------------------------------------------------------

const DRAFTS = "lensloop:draft:";
const DRAFT_DAYS = 3;
const draftKey = (taskId) => `${DRAFTS}${config.user}:${config.project}:${taskId}`;

function storage() {
  try {
    return window.localStorage; // may throw where storage is disabled; drafts are only a convenience
  } catch {
    return null;
  }
}

/** Has the annotator put anything into the task on screen (a pick, a flag, a rationale)? */
function touched() {
  return state.ranking.groups.length > 0 || flags().length > 0 || rationale.value.trim() !== "";
}

function saveDraft() {
  const store = storage();
  if (!store || !state.task || state.lost) return;
  const key = draftKey(state.task.task_id);
  try {
    if (!touched()) store.removeItem(key);
    else {
      const draft = { groups: state.ranking.ordering(), flags: flags(), rationale: rationale.value, uuid: state.uuid, at: Date.now() };
      store.setItem(key, JSON.stringify(draft));
    }
  } catch {
    // quota or privacy settings: the ranking is still on screen
  }
}

function dropDraft(taskId) {
  try {
    storage()?.removeItem(draftKey(taskId));
  } catch {
    // nothing to do
  }
}

/** Put a kept draft of ``task`` back on screen, if there is a valid one; true when it did. */
function restoreDraft(task) {
  let draft;
  try {
    draft = JSON.parse(storage()?.getItem(draftKey(task.task_id)) || "null");
  } catch {
    return false;
  }
  if (!draft || !Array.isArray(draft.groups)) return false;
  const ids = new Set(task.candidates.map((c) => c.id));
  const placed = draft.groups.flat();
  const valid =
    draft.groups.every((g) => Array.isArray(g) && g.length > 0) &&
    placed.every((id) => ids.has(id)) &&
    new Set(placed).size === placed.length;
  if (!valid) return false;
  state.ranking.groups = draft.groups.map((g) => [...g]);
  // The same id as before the reload: if that submit reached the server, resending it stores nothing new.
  if (typeof draft.uuid === "string" && draft.uuid) state.uuid = draft.uuid;
  const on = new Set(Array.isArray(draft.flags) ? draft.flags : []);
  for (const box of flagsBox.querySelectorAll("input")) box.checked = on.has(box.value);
  rationale.value = typeof draft.rationale === "string" ? draft.rationale : "";
  return true;
}

function pruneDrafts() {
  const store = storage();
  if (!store) return;
  const old = Date.now() - DRAFT_DAYS * 86400_000;
  try {
    for (const key of Object.keys(store)) {
      if (!key.startsWith(DRAFTS)) continue;
      const at = JSON.parse(store.getItem(key) || "null")?.at;
      if (!(at > old)) store.removeItem(key);
    }
  } catch {
    // a corrupt entry or no access: leave the rest
  }
}

// --- showing a task ---------------------------------------------------------------------------------

function candidateById(id) {
  return state.task.candidates.find((c) => c.id === id);
}

function numberOf(id) {
  return state.task.candidates.findIndex((c) => c.id === id) + 1;
}

function imageFor(task) {
  const hit = prefetched.get(task.image_url);
  if (hit) {
    prefetched.delete(task.image_url);
    return hit;
  }
  const img = new Image();
  img.src = task.image_url;
  return img;
}

function prefetch(upcoming) {
  for (const { image_url: src } of upcoming || []) {
    if (prefetched.has(src) || src === state.task?.image_url) continue;
    const img = new Image();
    img.decoding = "async";
    img.src = src;
    img.decode().catch(() => prefetched.delete(src));
    prefetched.set(src, img);
  }
  while (prefetched.size > 6) prefetched.delete(prefetched.keys().next().value);
}

async function showTask(task) {
  state.task = task;
  state.ranking = new Ranking(task.candidates.map((c) => c.id));
  state.uuid = newUUID(); // one per task: retries and double clicks reuse it, so nothing counts twice
  state.lost = false;
  state.focusGroup = 0;
  state.leaseEnds = Date.now() + task.lease_seconds_left * 1000;
  state.leaseSeconds = Math.max(task.lease_seconds_left, 1);
  $("prompt").textContent = task.prompt;
  $("image-open").href = task.image_url;
  pool.replaceChildren(
    ...task.candidates.map((c, i) => {
      const li = document.createElement("li");
      const card = document.createElement("button");
      card.type = "button";
      card.className = "card";
      card.dataset.id = c.id;
      card.setAttribute("aria-keyshortcuts", String(i + 1));
      const num = document.createElement("span");
      num.className = "num";
      num.textContent = String(i + 1);
      const handle = document.createElement("span");
      handle.className = "handle";
      handle.setAttribute("aria-hidden", "true");
      handle.textContent = "⠿";
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = c.text;
      const badge = document.createElement("span");
      badge.className = "badge rank-badge";
      card.append(num, text, badge, handle);
      if (boxTask) card.style.setProperty("--cand", candidateColor(i + 1));
      li.append(card);
      return li;
    }),
  );
  if (overlay) showBoxes(task);
  for (const box of flagsBox.querySelectorAll("input")) box.checked = false;
  rationale.value = "";
  const restored = restoreDraft(task);
  closeFlags(false);
  hideAlert();
  if (restored) showAlert("Your unsent ranking of this task is back: this browser kept it.", "info");
  leaseBox.hidden = true;
  $("empty").hidden = true;
  $("paused").hidden = true;
  work.hidden = false;
  render();
  const ready = viewer.show(imageFor(task), task.image_width, task.image_height);
  work.dataset.taskId = task.task_id;
  work.dataset.state = "ready";
  work.removeAttribute("aria-busy");
  state.shownAt = performance.now();
  return ready;
}

/** Draw every candidate's boxes; a candidate whose answer states no box says so on its card (it scores 0). */
function showBoxes(task) {
  const counts = overlay.show(task.candidates.map((c, i) => ({ id: c.id, number: i + 1, text: c.text })),
    task.image_width, task.image_height);
  for (const card of pool.querySelectorAll(".card")) {
    const n = counts.get(Number(card.dataset.id));
    card.classList.toggle("no-box", n === 0);
    if (n === 0) {
      const note = document.createElement("span");
      note.className = "badge badge-bad no-box-badge";
      note.textContent = "no box";
      card.querySelector(".text").after(note);
    }
  }
}

/** Hovering or focusing a candidate (card or ranked chip) or a rank brings its boxes forward. */
function highlightFrom(e) {
  if (!overlay || !state.task) return;
  const el = e.target.closest?.(".card[data-id], .chip[data-id]");
  if (el) return overlay.highlight([Number(el.dataset.id)]);
  const li = e.target.closest?.("#ranking li[data-group]");
  overlay.highlight(li ? state.ranking.groups[Number(li.dataset.group)] : null);
}

function showEmpty() {
  state.task = null;
  work.hidden = true;
  work.dataset.state = "empty";
  work.removeAttribute("aria-busy");
  delete work.dataset.taskId;
  $("paused").hidden = true;
  $("empty").hidden = false;
  $("empty-done").textContent = $("done-today").textContent;
  $("empty-title").focus();
}

/** Paused in this project (gold accuracy below its threshold): say why; a project admin re-admits. */
function showPaused(reason) {
  state.task = null;
  work.hidden = true;
  work.dataset.state = "paused";
  work.removeAttribute("aria-busy");
  delete work.dataset.taskId;
  $("empty").hidden = true;
  $("paused").hidden = false;
  $("paused-reason").textContent = String(reason || "paused by a project admin").replace(/\.$/, "");
  $("paused-title").focus();
}

function showProgress(progress) {
  if (!progress) return;
  $("done-today").textContent = progress.done_today;
  $("empty-done").textContent = progress.done_today;
  $("open-in-queue").textContent = progress.open_in_queue;
}

/** The count of today's rankings, one more: a submit was stored. (The queue's count comes with the next read.) */
function countOneMore() {
  showProgress({ done_today: Number($("done-today").textContent) + 1, open_in_queue: $("open-in-queue").textContent });
}

/**
 * Put the next task (null: the queue is empty) on screen at once (keys work from here on) and return
 * a promise that resolves when its image is decoded and painted.
 */
function present(task) {
  if (!task) {
    overlay?.hide();
    showEmpty();
    return Promise.resolve();
  }
  const ready = showTask(task);
  // Keys work from the first moment; focus never jumps away from where the annotator put it.
  if (!document.activeElement || document.activeElement === document.body) work.focus();
  return ready.then(() => new Promise((r) => requestAnimationFrame(() => r())));
}

// --- the ranking on screen --------------------------------------------------------------------------

function rankLabel(gi) {
  const tied = state.ranking.groups[gi].length > 1;
  return tied ? `${ordinal(gi + 1)} (tied)` : ordinal(gi + 1);
}

function render() {
  if (!state.task) return;
  const r = state.ranking;
  for (const card of pool.querySelectorAll(".card")) {
    const id = Number(card.dataset.id);
    const gi = r.groupOf(id);
    card.classList.toggle("placed", gi !== -1);
    card.classList.toggle("tied", gi !== -1 && r.groups[gi].length > 1);
    card.querySelector(".rank-badge").textContent = gi === -1 ? "" : rankLabel(gi);
  }
  state.focusGroup = Math.min(state.focusGroup, Math.max(r.groups.length - 1, 0));
  const hadFocus = rankingList.contains(document.activeElement);
  rankingList.replaceChildren(
    ...r.groups.map((group, gi) => {
      const li = document.createElement("li");
      li.setAttribute("role", "option");
      li.dataset.group = gi;
      li.tabIndex = gi === state.focusGroup ? 0 : -1;
      li.setAttribute("aria-selected", String(gi === state.focusGroup));
      li.classList.toggle("tied", group.length > 1);
      const label = document.createElement("span");
      label.className = "rank";
      label.textContent = rankLabel(gi);
      li.append(label);
      for (const id of group) {
        const chip = document.createElement("span");
        chip.className = "chip";
        chip.dataset.id = id;
        if (boxTask) chip.style.setProperty("--cand", candidateColor(numberOf(id)));
        const num = document.createElement("span");
        num.className = "num";
        num.textContent = String(numberOf(id));
        const text = document.createElement("span");
        text.className = "text";
        text.textContent = candidateById(id).text;
        chip.append(num, text);
        li.append(chip);
      }
      return li;
    }),
  );
  if (hadFocus) rankingList.querySelector('[tabindex="0"]')?.focus();
  const left = r.remaining().length;
  $("drop-end").classList.toggle("done", left === 0);
  submitBtn.setAttribute("aria-disabled", String(left > 0 || state.busy));
  work.dataset.complete = String(left === 0);
}

function say(text) {
  live.textContent = text;
}

function showAlert(text, kind = "error") {
  alertBox.textContent = text;
  alertBox.className = `alert alert-${kind}`;
  alertBox.hidden = false;
}

function hideAlert() {
  alertBox.hidden = true;
  alertBox.textContent = "";
}

function changed(ok, message) {
  if (!ok) return;
  if (!state.lost) hideAlert();
  render();
  saveDraft();
  if (message) say(message);
}

/** While a submit waits for the server the ranking must not change: a retry resends what was sent. */
function frozen() {
  if (!state.sending) return false;
  say("Your ranking is being sent; it cannot change until the server answers.");
  return true;
}

function freeze(on) {
  rationale.readOnly = on;
  for (const box of flagsBox.querySelectorAll("input")) box.disabled = on;
}

function pickNumber(n) {
  if (frozen()) return;
  const c = state.task.candidates[n - 1];
  if (!c) return;
  if (state.ranking.isPlaced(c.id)) {
    say(`Candidate ${n} is already ranked ${rankLabel(state.ranking.groupOf(c.id))}. Backspace undoes.`);
    return;
  }
  const ok = state.ranking.pick(c.id);
  changed(ok, `Candidate ${n} ranked ${rankLabel(state.ranking.groupOf(c.id))}.`);
}

function tie() {
  if (frozen()) return;
  const ok = state.ranking.tie();
  if (!ok) say("Pick two candidates before tying them.");
  const gi = state.ranking.groups.length - 1;
  changed(ok, gi >= 0 ? `Tied: ${state.ranking.groups[gi].map(numberOf).join(" and ")} share ${ordinal(gi + 1)}.` : "");
}

function undo() {
  if (frozen()) return;
  changed(state.ranking.undo(), "Undone.");
}

// --- flags, rationale, lease ------------------------------------------------------------------------

function openFlags() {
  flagsBox.hidden = false;
  $("btn-flags").setAttribute("aria-expanded", "true");
  flagsBox.querySelector("input").focus();
}

function closeFlags(refocus = true) {
  flagsBox.hidden = true;
  $("btn-flags").setAttribute("aria-expanded", "false");
  const on = [...flagsBox.querySelectorAll("input:checked")].map((b) => b.parentElement.textContent.trim());
  $("btn-flags").classList.toggle("on", on.length > 0);
  if (refocus) work.focus();
}

function flags() {
  return [...flagsBox.querySelectorAll("input:checked")].map((b) => b.value);
}

function mmss(seconds) {
  const s = Math.max(0, Math.round(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

setInterval(() => {
  if (!state.task || state.lost) return;
  const left = (state.leaseEnds - Date.now()) / 1000;
  const warnAt = Math.min(120, state.leaseSeconds / 5);
  if (left > warnAt) {
    leaseBox.hidden = true;
    return;
  }
  leaseBox.hidden = false;
  leaseBox.textContent =
    left > 0
      ? `Your hold on this task ends in ${mmss(left)}. Submit soon: after that another annotator may take it.`
      : "Your hold on this task has run out. Submit now: it is saved if nobody else has taken the task meanwhile.";
}, 1000);

// --- talking to the server --------------------------------------------------------------------------

/** A 5xx answer: a web worker, the database or a proxy is restarting; the same request may work soon. */
class ServerDown extends Error {
  constructor(status) {
    super(`the server answered ${status}`);
    this.status = status;
  }
}

/**
 * A refusal from the REST API: its body is ``{"error": code, "detail": sentence}`` (annotation/api/errors.py).
 * Says what happened and keeps the ranking on screen.
 */
function failure(res) {
  if (res.status >= 500) throw new ServerDown(res.status); // call() tries again
  const detail =
    res.status === 401
      ? "your session ended"
      : describe(res.data, `the server answered ${res.status}`).replace(/\.$/, "");
  if (res.status === 409) {
    state.lost = true;
    if (state.task) dropDraft(state.task.task_id); // it cannot be saved any more, reloaded or not
    showAlert(`Not saved: ${detail}. Your ranking is still on screen. Press N for the next task.`);
  } else if (res.status === 401 || res.status === 403) {
    showAlert(`Not saved: ${detail}. Log in again in another tab, then press Enter here — your ranking is kept.`);
  } else {
    showAlert(`Not saved: ${detail}`);
  }
  work.dataset.error = res.data?.error || String(res.status);
}

// Seconds to wait before each new try, the last one repeating: quick at first (a worker restarts in a
// second or two), then no more than one try every half minute per page.
const RETRY_DELAYS_S = [0.5, 1, 2, 4, 8, 15, 30];

/** Say that the server is unreachable, and resolve when it is time to try again (or Enter is pressed). */
function waitToRetry(what, err, attempt) {
  const base = RETRY_DELAYS_S[Math.min(attempt, RETRY_DELAYS_S.length) - 1];
  // ±20 %: after a restart the pages of many annotators do not all come back in the same instant.
  const seconds = base * (0.8 + 0.4 * Math.random());
  const why = err instanceof ServerDown ? `it answered ${err.status}` : "no connection";
  const kept = state.sending
    ? "Your ranking stays here and is sent again as soon as the server answers; it is stored once, however many tries it takes."
    : "Nothing is lost.";
  showAlert(
    `Reconnecting… the server is unavailable (${why}) while ${what}. ${kept} Next try in ${Math.max(1, Math.round(seconds))} s.`,
    "reconnecting",
  );
  work.dataset.error = "reconnecting";
  work.dataset.attempts = String(attempt);
  retryBtn.hidden = false;
  return new Promise((resolve) => {
    const go = () => {
      clearTimeout(timer);
      state.retryNow = null;
      retryBtn.hidden = true;
      resolve();
    };
    const timer = setTimeout(go, seconds * 1000);
    state.retryNow = go;
  });
}

/**
 * Run one request at a time; ``fn(attempt)`` may return {after: promise} to await once the page is
 * usable. A network error or a 5xx is tried again, with backoff, until the server answers: every
 * request the page sends is safe to repeat (submits carry their client_uuid).
 */
async function call(what, fn) {
  if (state.busy) return; // a double click or a held-down Enter never sends twice
  state.busy = true;
  work.setAttribute("aria-busy", "true");
  if (state.task) render();
  let result = null;
  try {
    for (let attempt = 1; ; attempt++) {
      try {
        result = await fn(attempt);
        if (attempt > 1) say("Reconnected.");
        break;
      } catch (err) {
        if (!(err instanceof NetworkError || err instanceof ServerDown)) throw err;
        await waitToRetry(what, err, attempt);
      }
    }
    if (work.dataset.error === "reconnecting") {
      hideAlert();
      delete work.dataset.error;
    }
  } finally {
    state.busy = false;
    work.removeAttribute("aria-busy");
    if (state.task) render();
  }
  if (result?.after) await result.after;
}

/**
 * Once a task is on screen (or the queue is empty): fresh progress figures, and the images of the
 * tasks likely to come next, downloaded and decoded while the annotator works. A read that leases
 * nothing, off every critical path.
 */
function fetchUpcoming(taskId) {
  getJSON(taskId ? `${config.urls.upcoming}?task=${taskId}` : config.urls.upcoming)
    .then((res) => {
      if (!res.ok) return;
      showProgress(res.data.progress);
      if (state.task) prefetch(res.data.upcoming);
    })
    .catch(() => {}); // only an optimisation: the next task still loads without it
}

/** Show ``task`` (or the empty queue), then look ahead. */
function proceed(task) {
  return present(task).then(() => fetchUpcoming(task?.task_id));
}

async function loadNext() {
  await call("fetching your next task", async () => {
    const res = await postJSON(config.urls.next); // 200 with a task, 204 when the queue is empty
    if (res.status === 403 && res.data?.error === "paused") return { after: Promise.resolve(showPaused(res.data.detail)) };
    if (!res.ok) return failure(res);
    delete work.dataset.error;
    return { after: proceed(res.status === 204 ? null : res.data) };
  });
}

async function submit() {
  if (!state.task || state.busy) return;
  if (state.lost) {
    showAlert("This task can no longer be saved. Press N for the next task.");
    return;
  }
  const left = state.ranking.remaining().length;
  if (left) {
    showAlert(`Rank all ${state.task.candidates.length} candidates first: ${left} left.`, "info");
    return;
  }
  const body = {
    ordering: state.ranking.ordering(),
    client_uuid: state.uuid,
    flags: flags(),
    rationale: rationale.value,
    time_spent_ms: Math.round(performance.now() - state.shownAt),
  };
  const taskId = state.task.task_id;
  state.sending = true;
  freeze(true);
  saveDraft(); // with its client_uuid: a reload while reconnecting resends under the same id
  try {
    await call("submitting", (attempt) => sendRanking(taskId, body, attempt));
  } finally {
    state.sending = false;
    freeze(false);
  }
}

async function sendRanking(taskId, body, attempt) {
  const t0 = performance.now();
  const res = await postJSON(`${url("submit", taskId)}?next=1`, body);
  if (!res.ok) return failure(res);
  // 201: stored now. 200: stored before, by this same client_uuid: by an earlier try whose answer was
  // lost (one more all the same), or before a reload (already in the count the page came with).
  if (res.status === 201 || attempt > 1) countOneMore();
  dropDraft(taskId);
  state.sending = false; // keys work on the next task from the moment it is on screen
  freeze(false);
  delete work.dataset.error;
  say("Saved. Next task.");
  const answered = performance.now();
  const task = res.data.next_task;
  if (!task && res.data.paused) {
    showPaused(res.data.paused);
    return { after: Promise.resolve() };
  }
  const shown = present(task).then(() => {
    // Standard User Timing entries (bench/ui.py reads them): submit sent → answer, → next task painted.
    performance.measure("lensloop:next-task-answer", { start: t0, end: answered });
    performance.measure("lensloop:next-task", { start: t0 });
    fetchUpcoming(task?.task_id);
  });
  return { after: shown };
}

async function skip() {
  if (!state.task || state.busy) return;
  const taskId = state.task.task_id;
  await call("skipping", async (attempt) => {
    const res = await postJSON(`${url("skip", taskId)}?next=1`, {});
    // A 409 on a later try: an earlier one was stored before its answer was lost; the task is ours no more.
    const skippedBefore = res.status === 409 && attempt > 1;
    if (!res.ok && !skippedBefore) return failure(res);
    let task = res.data?.next_task ?? null;
    if (skippedBefore) {
      const next = await postJSON(config.urls.next);
      if (!next.ok) return failure(next);
      task = next.status === 204 ? null : next.data;
    }
    dropDraft(taskId);
    delete work.dataset.error;
    if (!task && res.data?.paused) return { after: Promise.resolve(showPaused(res.data.paused)) };
    say("Skipped. Next task.");
    return { after: proceed(task) };
  });
}

// --- keyboard ---------------------------------------------------------------------------------------

function isTyping(el) {
  return el?.matches?.("textarea, input:not([type=checkbox]):not([type=radio]), select, [contenteditable]");
}

document.addEventListener("keydown", (e) => {
  if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.isComposing) return;
  const t = e.target;
  if (isTyping(t)) {
    if (e.key === "Escape") {
      t.blur();
      work.focus();
    }
    return;
  }
  if (e.key === "Enter" && state.retryNow && !t.matches?.("a, summary, button:not(.card)")) {
    e.preventDefault();
    state.retryNow(); // reconnecting: try now rather than at the end of the wait
    return;
  }
  if (!state.task) {
    if ((!$("empty").hidden || !$("paused").hidden) && (e.key === "Enter" || e.key.toLowerCase() === "n") && !t.matches?.("a, button")) {
      e.preventDefault();
      loadNext();
    }
    return;
  }
  if (e.altKey) return; // Alt+arrows belong to the ranking list
  // Enter or Space on a control does what the control says; Enter elsewhere submits.
  const onControl = t.matches?.("a, summary, button:not(.card)");
  const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  if (/^[1-9]$/.test(key) && !(t.closest?.("#flags"))) {
    e.preventDefault();
    pickNumber(Number(key));
    return;
  }
  switch (key) {
    case "t":
      tie();
      break;
    case "Backspace":
      undo();
      break;
    case "Enter":
      if (onControl) return;
      submit();
      break;
    case "s":
      skip();
      break;
    case "f":
      if (flagsBox.hidden) openFlags();
      else closeFlags();
      break;
    case "r":
      rationale.focus();
      break;
    case "i":
      $("instructions").open = !$("instructions").open;
      break;
    case "n":
      if (state.lost) loadNext();
      else return;
      break;
    case "z":
      viewer.toggleFull();
      break;
    case "+":
    case "=":
      viewer.zoomBy(1.25);
      break;
    case "-":
      viewer.zoomBy(1 / 1.25);
      break;
    case "0":
      viewer.fit();
      break;
    case "Escape":
      if (!flagsBox.hidden) closeFlags();
      else if (!viewer.isFull()) viewer.fit();
      break;
    default:
      if (t === $("viewer") && key.startsWith("Arrow")) {
        const step = 60;
        const d = { ArrowLeft: [step, 0], ArrowRight: [-step, 0], ArrowUp: [0, step], ArrowDown: [0, -step] }[key];
        viewer.pan(...d);
        break;
      }
      return;
  }
  e.preventDefault();
});

// The ranking list as a sortable listbox: arrows move focus, Alt+arrows move the rank, Delete unranks.
rankingList.addEventListener("keydown", (e) => {
  const li = e.target.closest("li[data-group]");
  if (!li) return;
  if ((e.altKey || e.key === "Delete") && frozen()) return;
  const gi = Number(li.dataset.group);
  const n = state.ranking.groups.length;
  let handled = true;
  if (e.key === "ArrowUp" || e.key === "ArrowDown") {
    const d = e.key === "ArrowUp" ? -1 : 1;
    if (e.altKey) {
      if (state.ranking.shiftGroup(gi, d)) {
        state.focusGroup = gi + d;
        changed(true, `Moved to ${ordinal(gi + d + 1)}.`);
      }
    } else {
      state.focusGroup = Math.min(Math.max(gi + d, 0), n - 1);
      render();
      rankingList.querySelector('[tabindex="0"]')?.focus();
    }
  } else if (e.key === "Delete") {
    changed(state.ranking.unplaceGroup(gi), "Returned to the candidates.");
    if (!state.ranking.groups.length) work.focus();
  } else {
    handled = false;
  }
  if (handled) e.preventDefault();
});

// --- mouse, touch -----------------------------------------------------------------------------------

// Buttons clicked with the mouse do not keep the focus, so Enter afterwards still submits.
for (const el of [pool, document.querySelector(".controls"), document.querySelector(".viewer-tools")]) {
  el.addEventListener("mousedown", (e) => {
    if (e.target.closest("button")) e.preventDefault();
  });
}

function resolveDrop(x, y) {
  const el = document.elementFromPoint(x, y);
  if (!el) return null;
  const li = el.closest("#ranking li[data-group]");
  if (li) {
    const r = li.getBoundingClientRect();
    const rel = (y - r.top) / r.height;
    const kind = rel < 0.25 ? "before" : rel > 0.75 ? "after" : "into";
    const of = state.ranking.groups[Number(li.dataset.group)][0];
    return { target: { kind, of }, highlight: [li, `drop-${kind}`] };
  }
  if (el.closest("#drop-end, #ranking")) return { target: { kind: "end" }, highlight: [$("drop-end"), "drop-active"] };
  if (el.closest("#pool")) return { target: { kind: "pool" }, highlight: [pool, "drop-active"] };
  return null;
}

function dropped(id, target) {
  if (!state.task || frozen()) return;
  const n = numberOf(id);
  const ok = state.ranking.move(id, target);
  const gi = state.ranking.groupOf(id);
  changed(ok, gi === -1 ? `Candidate ${n} returned to the candidates.` : `Candidate ${n} ranked ${rankLabel(gi)}.`);
}

const poolDragged = draggable(pool, ".card", { idOf: (el) => Number(el.dataset.id), resolve: resolveDrop, drop: dropped, handle: ".handle" });
draggable(rankingList, ".chip", { idOf: (el) => Number(el.dataset.id), resolve: resolveDrop, drop: dropped });

pool.addEventListener("click", (e) => {
  const card = e.target.closest(".card");
  if (!card || poolDragged() || !state.task) return;
  const id = Number(card.dataset.id);
  if (state.ranking.isPlaced(id)) return;
  pickNumber(numberOf(id));
});

for (const list of [pool, rankingList]) {
  list.addEventListener("pointerover", highlightFrom);
  list.addEventListener("focusin", highlightFrom);
  list.addEventListener("pointerleave", () => overlay?.highlight(null));
  list.addEventListener("focusout", (e) => {
    if (!list.contains(e.relatedTarget)) overlay?.highlight(null);
  });
}

$("btn-tie").addEventListener("click", tie);
$("btn-undo").addEventListener("click", undo);
$("btn-clear").addEventListener("click", () => frozen() || changed(state.ranking.clear(), "Cleared."));
$("btn-flags").addEventListener("click", () => (flagsBox.hidden ? openFlags() : closeFlags()));
$("btn-skip").addEventListener("click", skip);
submitBtn.addEventListener("click", submit);
$("btn-recheck").addEventListener("click", loadNext);
$("btn-paused-recheck").addEventListener("click", loadNext);
retryBtn.addEventListener("click", () => state.retryNow?.());
flagsBox.addEventListener("change", saveDraft);
rationale.addEventListener("input", saveDraft);
// The browser says it is online again: no reason to sit out the rest of the wait.
window.addEventListener("online", () => state.retryNow?.());

// Leaving (or closing) the page with its task untouched gives the lease back, so the next visit is
// handed the queue's best task instead of this one (the queue returns one's own lease first). A
// touched task keeps its lease and its draft. A released task can still be submitted while nobody
// else has taken it. keepalive lets the request outlive the page; unlike sendBeacon it can carry
// Django's CSRF header.
window.addEventListener("pagehide", () => {
  if (!state.task || state.lost || state.sending || state.busy || touched()) return;
  const taskId = state.task.task_id;
  state.released = taskId;
  fetch(url("release", taskId), {
    method: "POST",
    keepalive: true,
    credentials: "same-origin",
    headers: { Accept: "application/json", "X-CSRFToken": csrfToken() },
  }).catch(() => {}); // at worst the lease runs out as before
});
// Back from the back/forward cache after giving the lease back: take a task again.
window.addEventListener("pageshow", (e) => {
  if (e.persisted && state.released) {
    state.released = null;
    loadNext();
  }
});
$("zoom-fit").addEventListener("click", () => viewer.fit());
$("zoom-full").addEventListener("click", () => viewer.toggleFull());
$("zoom-in").addEventListener("click", () => viewer.zoomBy(1.25));
$("zoom-out").addEventListener("click", () => viewer.zoomBy(1 / 1.25));

work.tabIndex = -1;
pruneDrafts();
loadNext();
