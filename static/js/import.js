// The import page: upload a zip (or a folder, zipped here) to the REST API's import endpoint with a
// progress bar, then show the report: figures, and every refused row as file:line: message.

import { csrfToken, describe } from "./net.js";
import { zipFiles } from "./zip.js";

const $ = (id) => document.getElementById(id);
const form = $("import-form");
const bar = $("import-progress");
const barLabel = $("import-progress-label");

function progress(label, fraction) {
  $("import-progress-wrap").hidden = false;
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
    xhr.upload.addEventListener("load", () => progress("Uploaded; checking images and rows…", null));
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
  dd.textContent = String(value);
  div.append(dt, dd);
  dl.append(div);
}

function showReport(status, data) {
  const report = data.report || (data.rows !== undefined ? data : null);
  const box = $("import-report");
  box.hidden = false;
  box.dataset.status = String(status);
  const summary = $("report-summary");
  const figures = $("report-figures");
  const problems = $("report-problems");
  figures.replaceChildren();
  problems.replaceChildren();
  if (!report) {
    summary.textContent = `Import failed: ${describe(data, "unknown error")}`;
    summary.className = "error";
  } else {
    const refused = status >= 400;
    summary.className = refused ? "error" : "";
    summary.textContent = refused
      ? `Nothing was imported: ${report.problems.length} problem(s) in ${report.manifest || "the bundle"} (all or nothing).`
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
  }
  problems.hidden = $("report-problems-title").hidden = !problems.children.length;
  $("report-title").focus();
}

form.addEventListener("submit", async (e) => {
  e.preventDefault();
  const file = $("import-file").files[0];
  const folder = [...$("import-folder").files];
  if (!file && !folder.length) {
    showReport(400, { detail: "choose a zip file or a folder first" });
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
    progress("Uploading… 0%", 0);
    const { status, data } = await upload(body);
    progress(status >= 200 && status < 300 ? "Done." : "Finished with problems.", 1);
    showReport(status, data);
  } finally {
    $("import-submit").disabled = false;
  }
});
