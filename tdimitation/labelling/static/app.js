// The labelling page: show the next pair, send answers, undo. No build step, no libraries.
"use strict";

const KEYS = { ArrowLeft: "left", ArrowRight: "right", ArrowUp: "equal", ArrowDown: "cant_tell" };
let current = null; // the query on screen
let busy = false;

function el(id) { return document.getElementById(id); }

function say(text) { el("message").textContent = text; }

function showProgress(progress) {
  el("progress").textContent = progress.answered + " answered, " + progress.open + " open";
}

function setEnabled(enabled) {
  for (const choice of Object.values(KEYS)) el("btn-" + choice).disabled = !enabled;
}

async function call(method, path, body) {
  const options = { method: method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const data = await response.json();
  return { ok: response.ok, status: response.status, data: data };
}

async function loadNext() {
  const result = await call("GET", "/api/next");
  if (!result.ok) { say(result.data.error); return; }
  showProgress(result.data.progress);
  current = result.data.query;
  el("clips").hidden = current === null;
  el("empty").hidden = current !== null;
  setEnabled(current !== null);
  if (current === null) { setTimeout(loadNext, 3000); return; }
  el("left").src = current.left;
  el("right").src = current.right;
  document.body.dataset.queryId = String(current.query_id);
}

async function answer(choice) {
  if (busy || current === null) return;
  busy = true;
  try {
    const result = await call("POST", "/api/answer", { query_id: current.query_id, choice: choice });
    await loadNext();
    say(result.ok ? "Saved: " + choice.replace("_", " ") : result.data.error);
  } finally { busy = false; }
}

async function undo() {
  if (busy) return;
  busy = true;
  try {
    const result = await call("POST", "/api/undo", {});
    await loadNext();
    say(result.ok ? "Undone: " + result.data.choice.replace("_", " ") : result.data.error);
  } finally { busy = false; }
}

for (const choice of Object.values(KEYS)) {
  el("btn-" + choice).addEventListener("click", () => answer(choice));
}
el("btn-undo").addEventListener("click", undo);
document.addEventListener("keydown", (event) => {
  if (event.key in KEYS) { event.preventDefault(); answer(KEYS[event.key]); }
  else if (event.key === "u" || event.key === "U") { event.preventDefault(); undo(); }
});
loadNext();
