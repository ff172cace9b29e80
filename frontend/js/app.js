// Entry point: token box, hash router, page lifecycle.
import { api, getToken, setToken } from "./api.js";
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

async function route() {
  if (cleanup) cleanup();
  cleanup = null;
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
    cleanup = (await pageFor(hash)(main, hash)) || null;
  } catch (error) {
    main.append(Object.assign(document.createElement("p"), { className: "error", textContent: error.message }));
    if (error.status === 401) showSettings(true);
  }
}

function showSettings(open) {
  document.getElementById("settings").hidden = !open;
  if (open) document.getElementById("token-input").focus();
}

/** Asks the server who the token belongs to: "ok", "token" (401: none or not accepted), or the error. */
async function checkMe() {
  try {
    const me = await api("/me");
    document.getElementById("whoami").textContent = `signed in as ${me.name}`;
    return "ok";
  } catch (error) {
    document.getElementById("whoami").textContent = "";
    if (error.status !== 401) return error;
    say(getToken() ? "The token was not accepted." : "This server needs an API token.");
    showSettings(true);
    return "token";
  }
}

/** What went wrong when the server did not answer who we are, for anything but a 401. */
function unreachable(error) {
  if (error.status === 503) return "The server is running but cannot reach its database (503 database unavailable).";
  if (error.status) return `The server answered with an error: ${error.message}.`;
  return `The server cannot be reached (${error.message}).`;
}

let retry = null;

/** Checks the token, then shows the page; a server or database that is away is tried again. */
async function start() {
  clearTimeout(retry);
  const state = await checkMe();
  const main = document.getElementById("app");
  if (state === "ok") return route();
  if (state === "token") return main.replaceChildren(h("p", {}, "Enter an API token to see your jobs."));
  retry = setTimeout(start, RETRY_SECONDS * 1000);
  return main.replaceChildren(h("p", { id: "startup-error", class: "error" }, unreachable(state)),
    h("p", {}, `Trying again every ${RETRY_SECONDS} seconds. `,
      h("button", { type: "button", id: "retry", class: "secondary", onclick: start }, "Try again now")));
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
      clearTimeout(retry);
      route();
    } else if (state !== "token") say(unreachable(state));
  });
  document.getElementById("token-clear").addEventListener("click", () => {
    setToken("");
    say("Token forgotten.");
    checkMe();
  });
}

setupSettings();
window.addEventListener("hashchange", route);
start();
