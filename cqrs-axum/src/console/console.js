// The ops console: polls the ops API of the service that serves it and retries dead letters
// with the token typed in (asked for when the field is empty). No framework, no build step.
"use strict";

const REFRESH_MS = 2000;
const PAGE = 50;
let projection = null;
let cursors = [null];
// Answers to older requests are dropped: a slow one must not redraw what a retry removed.
let generation = 0;

const $ = (selector) => document.querySelector(selector);

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "–" : String(text);
  if (className) td.className = className;
  return td;
}

function badge(text, state) {
  const span = document.createElement("span");
  span.className = "badge " + state;
  span.textContent = text;
  const td = document.createElement("td");
  td.append(span);
  return td;
}

function say(text, isError) {
  const message = $("#message");
  message.textContent = text;
  message.className = isError ? "error" : "";
}

async function getJson(path) {
  const answer = await fetch(path, { headers: { accept: "application/json" } });
  const body = await answer.json();
  return { status: answer.status, body };
}

async function refreshHealth() {
  const { body } = await getJson("health");
  $("#service").textContent = body.service;
  document.title = body.service + " console";
  const status = $("#status");
  status.textContent = body.status;
  status.className = "badge " + body.status;
  const processors = body.processors || [];
  const worst = Math.max(1, ...processors.map((p) => p.lag || 0));
  const rows = processors.map((p) => {
    const tr = document.createElement("tr");
    tr.dataset.name = p.name;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = (100 * (p.lag || 0)) / worst + "%";
    bar.append(fill);
    const barCell = document.createElement("td");
    barCell.className = "bar-cell";
    barCell.append(bar);
    const lag = p.lag === undefined ? "–" : p.lag + " events";
    const seconds = p.lag_seconds === undefined ? "" : " · " + p.lag_seconds.toFixed(1) + " s";
    // A projection run in segments names the ones this instance holds (none: a spare).
    const feed = p.segments === undefined ? p.feed
      : p.feed + " · segments " + (p.segments.length ? p.segments.join(", ") : "none (spare)");
    tr.append(cell(p.name), cell(feed), cell(p.position, "num"), cell(lag + seconds), barCell,
      p.stopped ? badge("stopped: " + p.stopped, "stopped") : badge("running", "ok"));
    return tr;
  });
  $("#processors tbody").replaceChildren(...rows);
  $("#relays tbody").replaceChildren(...(body.relays || []).map((r) => {
    const tr = document.createElement("tr");
    tr.dataset.name = r.name;
    tr.append(cell(r.name), badge(r.breaker, r.breaker), cell(r.position, "num"),
      r.stopped ? badge("stopped: " + r.stopped, "stopped") : badge("running", "ok"));
    return tr;
  }));
  const select = $("#projection");
  const names = processors.map((p) => p.name);
  if (select.options.length !== names.length) {
    select.replaceChildren(...names.map((n) => new Option(n, n)));
    projection = projection && names.includes(projection) ? projection : names[0] || null;
    select.value = projection || "";
  }
}

async function refreshDeadLetters() {
  if (!projection) return;
  const asked = ++generation;
  const after = cursors[cursors.length - 1];
  const query = "?projection=" + encodeURIComponent(projection) + "&limit=" + PAGE +
    (after ? "&cursor=" + encodeURIComponent(after) : "");
  const { status, body } = await getJson("dead-letters" + query);
  if (asked !== generation) return;
  if (status !== 200) {
    say(body.message || "cannot list the dead letters", true);
    return;
  }
  if (body.items.length === 0 && cursors.length > 1) {
    // This page emptied (its letters were retried): back to the one before.
    cursors.pop();
    return refreshDeadLetters();
  }
  // Unchanged rows stay as they are (a button under the pointer is not replaced).
  const shown = JSON.stringify(body.items);
  const tbody = $("#dead-letters tbody");
  if (tbody.dataset.shown === shown) return;
  tbody.dataset.shown = shown;
  tbody.replaceChildren(...body.items.map((d) => {
    const tr = document.createElement("tr");
    tr.dataset.eventId = d.event_id;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "retry";
    button.textContent = "Retry";
    button.addEventListener("click", () => retry(d.event_id));
    const action = document.createElement("td");
    action.append(button);
    tr.append(cell(d.position, "num"), cell(d.event_name), cell(d.stream_id),
      cell(d.reason, "reason"), action);
    return tr;
  }));
  const older = $("#older");
  older.hidden = !body.next;
  older.onclick = () => { cursors.push(body.next); refreshDeadLetters(); };
}

function token() {
  let value = $("#token").value.trim();
  if (!value) {
    value = (window.prompt("The ops token of this service:") || "").trim();
    $("#token").value = value;
  }
  return value;
}

async function retry(eventId) {
  const value = token();
  if (!value) {
    say("A retry needs the ops token.", true);
    return;
  }
  const path = (eventId ? "dead-letters/" + eventId + "/retry" : "dead-letters/retry") +
    "?projection=" + encodeURIComponent(projection);
  try {
    const answer = await fetch(path, { method: "POST", headers: { authorization: "Bearer " + value } });
    const body = await answer.json();
    if (answer.status !== 200) {
      say(body.message || "the retry failed", true);
    } else {
      const failed = body.failed.map(([id, why]) => id + ": " + why).join("; ");
      say(body.resolved.length + " resolved" + (failed ? ", failed again: " + failed : ""), false);
    }
  } catch (e) {
    say("The retry did not get an answer: " + e, true);
  }
  cursors = [null];
  await refreshDeadLetters();
}

async function refresh() {
  try {
    await refreshHealth();
    await refreshDeadLetters();
  } catch (e) {
    say("The service does not answer: " + e, true);
  }
}

$("#projection").addEventListener("change", (e) => {
  projection = e.target.value;
  cursors = [null];
  refreshDeadLetters();
});
$("#retry-all").addEventListener("click", () => retry(null));
refresh();
setInterval(refresh, REFRESH_MS);
