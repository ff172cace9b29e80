// Entry point: token box, hash router, page lifecycle.
import { api, getToken, setToken } from "./api.js";
import { clearStaleNotice, say } from "./dom.js";
import { jobsPage } from "./jobs.js";
import { newJobPage } from "./newjob.js";
import { detailPage } from "./detail.js";
import { comparePage } from "./compare.js";

let cleanup = null;

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

async function checkMe() {
  try {
    const me = await api("/me");
    document.getElementById("whoami").textContent = `signed in as ${me.name}`;
    return true;
  } catch (error) {
    document.getElementById("whoami").textContent = "";
    if (error.status === 401) {
      say(getToken() ? "The token was not accepted." : "This server needs an API token.");
      showSettings(true);
    }
    return false;
  }
}

function setupSettings() {
  document.getElementById("settings-btn").addEventListener("click", () => {
    showSettings(document.getElementById("settings").hidden);
  });
  document.getElementById("token-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    setToken(document.getElementById("token-input").value.trim());
    document.getElementById("token-input").value = "";
    if (await checkMe()) {
      showSettings(false);
      say("Token saved.");
      route();
    }
  });
  document.getElementById("token-clear").addEventListener("click", () => {
    setToken("");
    say("Token forgotten.");
    checkMe();
  });
}

setupSettings();
window.addEventListener("hashchange", route);
checkMe().then((ok) => {
  if (ok) route();
  else document.getElementById("app").replaceChildren(Object.assign(document.createElement("p"), { textContent: "Enter an API token to see your jobs." }));
});
