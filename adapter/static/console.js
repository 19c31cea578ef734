// miso-adapter console: copy buttons, dead-letter retry, auto-refresh, and the import
// page's upload with a progress bar. No framework, nothing loaded from elsewhere; data
// from the server is only ever set as text, never as HTML.
"use strict";

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

function setText(id, value) {
  const el = document.getElementById(id);
  if (el) el.textContent = value;
}

function number(n) {
  return Number(n || 0).toLocaleString("en-US");
}

// ---------------------------------------------------------------- copy a rule stub
document.querySelectorAll("[data-copy]").forEach((button) => {
  button.addEventListener("click", async () => {
    const text = document.getElementById(button.dataset.copy).textContent;
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch (err) {
      // No clipboard (plain http off localhost): select the text for Ctrl+C instead.
      const range = document.createRange();
      range.selectNodeContents(document.getElementById(button.dataset.copy));
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      button.textContent = "Selected: press Ctrl+C";
    }
    setTimeout(() => { button.textContent = "Copy"; }, 2500);
  });
});

// ---------------------------------------------------------------- dead letters
const selectAll = document.getElementById("dead-all");
if (selectAll) {
  selectAll.addEventListener("change", () => {
    document.querySelectorAll('input[name="dead"]').forEach((box) => { box.checked = selectAll.checked; });
  });
}

document.querySelectorAll("[data-retry]").forEach((button) => {
  button.addEventListener("click", async () => {
    let body;
    if (button.dataset.retry === "all") {
      body = { all: true };
    } else {
      const ids = [...document.querySelectorAll('input[name="dead"]:checked')].map((box) => Number(box.value));
      if (!ids.length) { setText("retry-status", "Select the dead letters to retry first."); return; }
      body = { ids };
    }
    button.disabled = true;
    try {
      const response = await fetch("/console/dead-letters/retry", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken() },
        body: JSON.stringify(body),
      });
      const answer = await response.json();
      if (!response.ok) throw new Error(answer.error || response.statusText);
      setText("retry-status", `${number(answer.requeued)} put back on the spool; the forwarder sends them now.`);
      setTimeout(() => window.location.reload(), 1500);
    } catch (err) {
      setText("retry-status", `Retry failed: ${err.message}`);
      button.disabled = false;
    }
  });
});

// ---------------------------------------------------------------- auto-refresh
const autoRefresh = document.getElementById("auto-refresh");
if (autoRefresh) {
  const key = "miso-adapter.console.autoRefresh";
  autoRefresh.checked = window.localStorage.getItem(key) !== "off";
  autoRefresh.addEventListener("change", () => {
    window.localStorage.setItem(key, autoRefresh.checked ? "on" : "off");
  });
  setInterval(() => {
    const busy = document.activeElement && ["INPUT", "BUTTON"].includes(document.activeElement.tagName)
      && document.activeElement !== autoRefresh;
    const selecting = String(window.getSelection()).length > 0;
    const picked = document.querySelector('input[name="dead"]:checked');
    if (autoRefresh.checked && document.visibilityState === "visible" && !busy && !selecting && !picked) {
      window.location.reload();
    }
  }, 30000);
}

// ---------------------------------------------------------------- import
const importForm = document.getElementById("import-form");
if (importForm) {
  const sourceInputs = importForm.querySelectorAll('input[name="source"]');
  const mixpanelOptions = document.getElementById("mixpanel-options");
  sourceInputs.forEach((input) => input.addEventListener("change", () => {
    mixpanelOptions.hidden = importForm.source.value !== "mixpanel";
  }));
  importForm.addEventListener("submit", (event) => {
    event.preventDefault();
    upload(importForm);
  });
}

function showError(message) {
  const box = document.getElementById("import-error");
  box.textContent = message;
  box.hidden = false;
}

function uploadId() {
  // crypto.getRandomValues works on plain http too (randomUUID needs a secure context).
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function upload(form) {
  const file = document.getElementById("import-file").files[0];
  if (!file) { showError("Choose a file first."); return; }
  // The server refuses a larger body (413) before reading it, and a browser then often
  // sees only a dropped connection: say so before sending.
  const limit = Number(form.dataset.limitBytes);
  if (limit && file.size > limit) {
    showError(`${file.name} is ${number(file.size)} bytes, over this adapter's limit of ${number(limit)} bytes (ADAPTER_MIXPANEL_MAX_MB).`);
    return;
  }
  const source = form.source.value;
  const id = uploadId();
  const params = new URLSearchParams({ source, id });
  if (source === "mixpanel") {
    if (form.project_timezone.value.trim()) params.set("project_timezone", form.project_timezone.value.trim());
    if (form.time_offset.value.trim()) params.set("time_offset", form.time_offset.value.trim());
  }
  const bar = document.getElementById("import-progress");
  document.getElementById("import-error").hidden = true;
  document.getElementById("import-summary").hidden = true;
  document.getElementById("import-progress-box").hidden = false;
  document.getElementById("import-start").disabled = true;
  let stored = 0; // percent of the file the server has stored
  let sent = 0; // percent of the file the browser has sent
  const show = () => {
    bar.value = stored;
    setText("import-percent", `${stored}%`);
    setText("import-state", stored >= 100 ? "Done."
      : `Stored ${stored}% of ${file.name} (${number(file.size)} bytes); sent ${sent}%.`);
  };
  show();

  // The bar follows what the server has stored (it publishes the bytes of the file it has
  // read and stored with each thousand rows), not only what the browser has sent: the
  // network buffers megabytes ahead of the store.
  let finished = false;
  const poll = async () => {
    if (finished) return;
    try {
      const response = await fetch(`/console/import/progress?id=${id}`, { credentials: "same-origin" });
      if (response.ok && !finished) {
        const state = await response.json();
        stored = Math.max(stored, Math.min(99, Math.floor((state.read / file.size) * 100)));
        show();
      }
    } catch (err) { /* the upload's own answer reports errors */ }
    if (!finished) setTimeout(poll, 400);
  };
  setTimeout(poll, 400);

  const xhr = new XMLHttpRequest();
  xhr.open("POST", `/console/import?${params}`);
  xhr.setRequestHeader("X-CSRF-Token", csrfToken());
  // The server reads JSON Lines or a JSON array alike, and recognises gzip by its bytes.
  xhr.setRequestHeader("Content-Type", "application/x-ndjson");
  xhr.responseType = "json";
  xhr.upload.addEventListener("progress", (event) => {
    if (!event.lengthComputable) return;
    sent = Math.floor((event.loaded / event.total) * 100);
    show();
  });
  xhr.addEventListener("load", () => {
    finished = true;
    document.getElementById("import-start").disabled = false;
    const answer = xhr.response || {};
    if (xhr.status !== 200) {
      setText("import-state", "");
      showError(`Not imported (${xhr.status}): ${answer.error || xhr.statusText}`);
      return;
    }
    stored = 100;
    show();
    showSummary(file.name, answer);
  });
  xhr.addEventListener("error", () => {
    finished = true;
    document.getElementById("import-start").disabled = false;
    showError("The upload failed: the connection was lost. What was stored stays stored; importing the file again adds only the rest.");
  });
  xhr.send(file);
}

function fillTable(id, entries, empty) {
  const body = document.getElementById(id);
  body.replaceChildren();
  if (!entries.length) entries = [[empty, ""]];
  for (const [name, count] of entries) {
    const row = body.insertRow();
    row.insertCell().textContent = name;
    const cell = row.insertCell();
    cell.className = "n";
    cell.textContent = count === "" ? "" : number(count);
  }
}

function showSummary(name, answer) {
  const skipped = Object.entries(answer.skipped || {}).sort((a, b) => b[1] - a[1]);
  setText("summary-file", `${name} → ${answer.source}`);
  setText("summary-received", number(answer.received));
  setText("summary-accepted", number(answer.accepted));
  setText("summary-duplicates", number(answer.duplicates));
  setText("summary-skipped", number(skipped.reduce((sum, [, n]) => sum + n, 0)));
  setText("summary-malformed", number(answer.malformed));
  setText("summary-links", number(answer.links));
  setText("summary-profiles", number(answer.profiles || 0));
  fillTable("summary-types", Object.entries(answer.types || {}), "no records");
  fillTable("summary-reasons", skipped, "nothing skipped");
  const errors = answer.errors || [];
  const list = document.getElementById("summary-errors");
  list.replaceChildren(...errors.map((text) => { const li = document.createElement("li"); li.textContent = text; return li; }));
  document.getElementById("summary-errors-box").hidden = !errors.length;
  const summary = document.getElementById("import-summary");
  summary.hidden = false;
  summary.scrollIntoView({ behavior: "smooth" });
}
