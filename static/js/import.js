// The import page: upload a zip (or a folder, zipped here) to the REST API's import endpoint with an upload
// progress bar. The API answers 202 with the import's URL; a worker imports, and this page follows it
// (rows checked, images stored, problems so far, then rows written) until the report: figures, and every
// refused row as file:line: message. The page's address moves to the import's own, so a reload follows it.

import { csrfToken, describe, getJSON, NetworkError, postJSON } from "./net.js";
import { zipFiles } from "./zip.js";

const $ = (id) => document.getElementById(id);
const form = $("import-form");
const bar = $("import-progress");
const barLabel = $("import-progress-label");
const POLL_MS = 1000;
const FINISHED = new Set(["succeeded", "rejected", "failed", "cancelled"]);
let cancelUrl = null;

function progress(label, fraction) {
  $("import-status").hidden = false;
  barLabel.textContent = label;
  if (fraction == null) bar.removeAttribute("value");
  else bar.value = Math.round(fraction * 100);
}

function upload(body) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.setRequestHeader("X-CSRFToken", csrfToken());
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) progress(`Uploading… ${Math.round((100 * e.loaded) / e.total)}%`, e.loaded / e.total);
    });
    xhr.upload.addEventListener("load", () => progress("Uploaded; queueing the import…", null));
    xhr.addEventListener("load", () => {
      let data = null;
      try {
        data = JSON.parse(xhr.responseText);
      } catch {
        data = { detail: `the server answered ${xhr.status}` };
      }
      resolve({ status: xhr.status, data });
    });
    xhr.addEventListener("error", () => resolve({ status: 0, data: { detail: "could not reach the server" } }));
    xhr.send(body);
  });
}

function figure(dl, label, value) {
  const div = document.createElement("div");
  const dt = document.createElement("dt");
  const dd = document.createElement("dd");
  dt.textContent = label;
  dd.textContent = typeof value === "number" ? value.toLocaleString("en") : String(value ?? "—");
  div.append(dt, dd);
  dl.append(div);
}

const n = (x) => (x ?? 0).toLocaleString("en");

/** The progress bar and counts of a running (or queued) import. */
function showProgress(job) {
  const p = job.progress || {};
  const counts = $("import-counts");
  counts.replaceChildren();
  $("import-status").dataset.state = job.state;
  if (job.state === "queued") {
    progress("Queued: waiting for a worker…", null);
  } else if (p.phase === "writing") {
    progress(`Writing rows… ${n(p.rows_written)} of ${n(p.rows_good)}`, p.fraction);
  } else {
    progress(`Checking rows and images… ${n(p.rows)} rows read`, p.fraction);
  }
  figure(counts, "Rows checked", p.rows ?? 0);
  figure(counts, "Images stored", p.images_stored ?? 0);
  figure(counts, "Problems so far", p.problems ?? 0);
  // PostgreSQL writes batches while later rows are checked: rows written show up during checking too.
  if (p.phase === "writing" || p.rows_written) figure(counts, "Rows written", p.rows_written ?? 0);
  const cancel = $("import-cancel");
  cancel.hidden = job.cancel_requested;
  cancelUrl = job.cancel_url;
}

function showReport(job) {
  const report = job.report;
  const box = $("import-report");
  box.hidden = false;
  box.dataset.state = job.state;
  $("import-status").dataset.state = job.state;
  $("import-cancel").hidden = true;
  const summary = $("report-summary");
  const figures = $("report-figures");
  const problems = $("report-problems");
  figures.replaceChildren();
  problems.replaceChildren();
  $("report-more").hidden = true;
  summary.className = job.state === "succeeded" ? "" : "error";
  if (!report) {
    progress(job.state === "cancelled" ? "Cancelled." : "Failed.", 1);
    summary.textContent =
      job.state === "cancelled" ? `Cancelled: ${job.error || "nothing was imported."}` : `Import failed: ${job.error || describe(job, "unknown error")}`;
  } else {
    progress(job.state === "succeeded" ? "Done." : "Finished with problems.", 1);
    summary.textContent =
      job.state === "rejected"
        ? `Nothing was imported: ${report.problems_total} problem(s) in ${report.manifest || "the bundle"} (all or nothing).`
        : `Imported ${report.rows_imported} of ${report.rows} rows from ${report.manifest}` +
          (report.rows_skipped ? `; ${report.rows_skipped} refused (listed below).` : ".");
    for (const [label, key] of [
      ["Rows", "rows"], ["Imported", "rows_imported"], ["Refused", "rows_skipped"], ["New images", "images_new"],
      ["Images reused", "images_reused"], ["Prompts", "prompts"], ["Candidates", "candidates"], ["Tasks", "tasks"],
    ]) figure(figures, label, report[key]);
    for (const p of report.problems) {
      const li = document.createElement("li");
      li.textContent = `${p.line ? `${p.file}:${p.line}` : p.file}${p.record ? ` [${p.record}]` : ""}: ${p.message}`;
      problems.append(li);
    }
    if (report.problems_total > report.problems.length) {
      $("report-more").hidden = false;
      $("report-more").textContent = `…and ${n(report.problems_total - report.problems.length)} more problems (the first ${report.problems.length} are listed).`;
    }
  }
  problems.hidden = $("report-problems-title").hidden = !problems.children.length;
  $("report-title").focus();
}

function showError(detail) {
  const box = $("import-report");
  box.hidden = false;
  box.dataset.state = "refused";
  $("report-figures").replaceChildren();
  $("report-problems").replaceChildren();
  $("report-problems").hidden = $("report-problems-title").hidden = true;
  $("report-summary").className = "error";
  $("report-summary").textContent = `Import failed: ${detail}`;
  $("report-title").focus();
}

/** Follow an import until it ends; resolves with its last state. */
async function follow(url) {
  $("import-report").hidden = true;
  for (;;) {
    let answer;
    try {
      answer = await getJSON(url);
    } catch (err) {
      if (!(err instanceof NetworkError)) throw err;
      progress("Lost the server; trying again…", null);
      await new Promise((r) => setTimeout(r, POLL_MS * 3));
      continue;
    }
    if (!answer.ok) {
      showError(`the server answered ${answer.status} for the import`);
      return null;
    }
    const job = answer.data;
    if (FINISHED.has(job.state)) {
      showReport(job);
      return job.state;
    }
    showProgress(job);
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

$("import-cancel").addEventListener("click", async () => {
  if (!cancelUrl) return;
  $("import-cancel").hidden = true;
  const answer = await postJSON(cancelUrl);
  if (answer.ok && answer.data.state === "running") progress("Cancelling at the next batch of rows…", null);
});

form.addEventListener("submit", async (e) => {
  e.preventDefault();
  const file = $("import-file").files[0];
  const folder = [...$("import-folder").files];
  if (!file && !folder.length) {
    showError("choose a zip file or a folder first");
    return;
  }
  $("import-submit").disabled = true;
  try {
    let blob = file;
    let name = file?.name;
    if (!file) {
      progress("Zipping the folder…", 0);
      blob = await zipFiles(
        folder.map((f) => ({ name: f.webkitRelativePath || f.name, blob: f })),
        (x) => progress(`Zipping the folder… ${Math.round(x * 100)}%`, x),
      );
      name = "folder.zip";
    }
    const body = new FormData();
    body.append("file", blob, name);
    body.append("mode", $("import-mode").value);
    body.append("manifest", $("import-manifest").value.trim());
    body.append("format", $("import-format").value);
    body.append("heldout", $("import-heldout").value);
    if ($("import-format").value !== "manifest") body.append("split", $("import-split").value.trim());
    if ($("import-limit").value.trim()) body.append("limit", $("import-limit").value.trim());
    $("import-report").hidden = true;
    progress("Uploading… 0%", 0);
    const { status, data } = await upload(body);
    if (status !== 202) {
      progress("Not imported.", 1);
      showError(describe(data, `the server answered ${status}`));
      return;
    }
    history.replaceState(null, "", data.page);
    await follow(data.url);
  } finally {
    $("import-submit").disabled = false;
  }
});

// Opened at an import's own address (after a reload, or from the list of recent imports): follow it.
const following = $("import-status").dataset.importUrl;
if (following) follow(following);
