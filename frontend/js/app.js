// Entry point: token box, hash router, page lifecycle.
import { ConnectionError, api, getToken, onUnauthorized, setToken } from "./api.js";
import { clearStaleNotice, h, say } from "./dom.js";
import { jobsPage } from "./jobs.js";
import { newJobPage } from "./newjob.js";
import { detailPage } from "./detail.js";
import { comparePage } from "./compare.js";

let cleanup = null;
const RETRY_SECONDS = 5;
const WORKERS_SECONDS = 30;
let workersTimer = null;

/** Says when no worker is there to run a job (GET /health counts them); checked on
 * every page change and every WORKERS_SECONDS. Says nothing when it cannot tell. */
async function checkWorkers() {
  clearTimeout(workersTimer);
  workersTimer = setTimeout(checkWorkers, WORKERS_SECONDS * 1000);
  const note = document.getElementById("workers-note");
  let workers = null;
  try {
    workers = (await api("/health")).workers;
  } catch (error) {
    workers = null;
  }
  note.hidden = workers !== 0;
  note.textContent = workers === 0
    ? "No worker is running on this server: queued jobs wait until one starts. " +
      "(The server's operator can see them with: dyart-service workers.)"
    : "";
}

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/jobs";
  const [path, query = ""] = raw.split("?");
  return { parts: path.split("/").filter(Boolean), params: new URLSearchParams(query) };
}

function pageFor({ parts }) {
  if (parts[0] === "new") return newJobPage;
  if (parts[0] === "compare") return comparePage;
  if (parts[0] === "jobs" && parts[1]) return detailPage;
  return jobsPage;
}

let visit = 0; // counts page changes and sign-outs: a page that finishes loading late is dropped
let retry = null;

/** Stops the page on screen (its timers and streams) and any retry of it. */
function leavePage() {
  visit += 1;
  clearTimeout(retry);
  if (cleanup) cleanup();
  cleanup = null;
}

async function route() {
  leavePage();
  const mine = visit;
  clearStaleNotice();
  checkWorkers();
  const main = document.getElementById("app");
  main.replaceChildren();
  const hash = parseHash();
  for (const a of document.querySelectorAll("header nav a")) {
    const active = a.getAttribute("href").slice(2) === (hash.parts[0] || "jobs");
    if (active) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  try {
    const done = (await pageFor(hash)(main, hash)) || null;
    if (mine === visit) cleanup = done;
    else if (done) done();
  } catch (error) {
    if (mine !== visit || error.status === 401) return; // left, or signed out (onUnauthorized)
    if (!(error instanceof ConnectionError) && error.status !== 503) {
      main.replaceChildren(h("p", { id: "page-error", class: "error" }, error.message));
      return;
    }
    // the server or its database is away: the page is tried again until it answers
    retry = setTimeout(() => { if (mine === visit) route(); }, RETRY_SECONDS * 1000);
    main.replaceChildren(...awayMessage(error, route));
  }
}

/** "The server cannot be reached…", then that it is tried again, with a button to try now. */
function awayMessage(error, again) {
  return [h("p", { id: "startup-error", class: "error" }, unreachable(error)),
    h("p", {}, `Trying again every ${RETRY_SECONDS} seconds. `,
      h("button", { type: "button", id: "retry", class: "secondary", onclick: again }, "Try again now"))];
}

/** The sign-in state, after any 401: no page, no name, the token box open, the server's reason. */
function signedOut(error) {
  leavePage();
  document.getElementById("whoami").textContent = "";
  const why = !getToken() ? "This server needs an API token."
    : `The token was not accepted (${error.message}).`;
  say(why);
  document.getElementById("app").replaceChildren(h("p", { id: "signed-out", class: "error" }, why),
    h("p", {}, "Enter an API token to see your jobs."));
  showSettings(true);
}

function showSettings(open) {
  document.getElementById("settings").hidden = !open;
  if (open) document.getElementById("token-input").focus();
}

/** Asks the server who the token belongs to: "ok", "token" (401: none or not accepted; the
 * page is then signed out), or the error. */
async function checkMe() {
  try {
    const me = await api("/me");
    document.getElementById("whoami").textContent = `signed in as ${me.name}`;
    return "ok";
  } catch (error) {
    document.getElementById("whoami").textContent = "";
    return error.status === 401 ? "token" : error;
  }
}

/** What went wrong when the server did not answer who we are, for anything but a 401. */
function unreachable(error) {
  if (error.status === 503) return "The server is running but cannot reach its database (503 database unavailable).";
  if (error instanceof ConnectionError) return `The server cannot be reached (${error.message}).`;
  return `The server answered with an error: ${error.message}.`;
}

/** Checks the token, then shows the page; a server or database that is away is tried again. */
async function start() {
  clearTimeout(retry);
  const state = await checkMe();
  if (state === "ok") return route();
  if (state === "token") return undefined; // signedOut has drawn the sign-in state
  leavePage();
  retry = setTimeout(start, RETRY_SECONDS * 1000);
  return document.getElementById("app").replaceChildren(...awayMessage(state, start));
}

function setupSettings() {
  document.getElementById("settings-btn").addEventListener("click", () => {
    showSettings(document.getElementById("settings").hidden);
  });
  document.getElementById("token-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    setToken(document.getElementById("token-input").value.trim());
    document.getElementById("token-input").value = "";
    const state = await checkMe();
    if (state === "ok") {
      showSettings(false);
      say("Token saved.");
      route();
    } else if (state !== "token") say(unreachable(state));
  });
  document.getElementById("token-clear").addEventListener("click", () => {
    setToken("");
    leavePage();
    document.getElementById("app").replaceChildren();
    start().then(() => say("Token forgotten."));
  });
}

onUnauthorized(signedOut);
setupSettings();
window.addEventListener("hashchange", route);
start();
