// The page shell: connection, session (token in sessionStorage), hash router and navigation.

import { Api, ApiError } from "./api.js";
import { button, h, toast } from "./ui.js";

const TOKEN_KEY = "mwp.session-token";
const TOKEN_TTL = 600; // seconds; a fresh token is fetched well before it expires
const TOKEN_REFRESH_MS = 4 * 60 * 1000;

const ROUTES = [
  [/^\/login$/, () => import("./pages/login.js"), false],
  [/^\/replication$/, () => import("./pages/replication-list.js"), true],
  [/^\/replication\/new$/, () => import("./pages/replication-wizard.js"), true],
  [/^\/replication\/advanced$/, () => import("./pages/replication-form.js"), true],
  [/^\/replication\/(\d+)\/edit$/, () => import("./pages/replication-form.js"), true],
  [/^\/snapshot-tasks$/, () => import("./pages/snapshot-tasks.js"), true],
  [/^\/ssh$/, () => import("./pages/ssh-connections.js"), true],
];

/** Everything a page gets: the API client, the user, navigation and a place to hand over drafts. */
const ctx = {
  api: null,
  user: null,
  drafts: new Map(),
  navigate(path) {
    if (window.location.hash === `#${path}`) route();
    else window.location.hash = `#${path}`;
  },
  onLoggedIn: async () => {
    await startSession();
    const wanted = currentPath();
    ctx.navigate(wanted === "/login" || !wanted ? "/replication" : wanted);
  },
};

let cleanup = null;
let refreshTimer = null;
let routeSerial = 0;

const main = () => document.getElementById("main");

function currentPath() {
  return window.location.hash.replace(/^#/, "") || "";
}

async function storeFreshToken() {
  try {
    const token = await ctx.api.call("auth.generate_token", TOKEN_TTL);
    sessionStorage.setItem(TOKEN_KEY, token);
  } catch (error) {
    console.warn("Could not refresh the session token", error);
  }
}

async function startSession() {
  try {
    ctx.user = await ctx.api.call("auth.me");
  } catch {
    ctx.user = { pw_name: "" };
  }
  await storeFreshToken();
  clearInterval(refreshTimer);
  refreshTimer = setInterval(storeFreshToken, TOKEN_REFRESH_MS);
  const topbar = document.querySelector(".topbar");
  topbar.hidden = false;
  topbar.querySelector(".user").textContent = ctx.user.pw_name || "";
}

function endSession() {
  ctx.user = null;
  clearInterval(refreshTimer);
  sessionStorage.removeItem(TOKEN_KEY);
  document.querySelector(".topbar").hidden = true;
}

async function logout() {
  try {
    await ctx.api.call("auth.logout");
  } catch (error) {
    console.warn(error);
  }
  endSession();
  ctx.navigate("/login");
}

/** Log in again with the stored token (page reload or reconnect). */
async function resumeSession() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) return false;
  try {
    if (await ctx.api.loginWithToken(token)) {
      await startSession();
      return true;
    }
  } catch (error) {
    console.warn("Token login failed", error);
  }
  sessionStorage.removeItem(TOKEN_KEY);
  return false;
}

async function connect() {
  const api = new Api();
  await api.connect();
  ctx.api = api;
  api.addEventListener("close", onConnectionLost);
}

async function onConnectionLost() {
  const banner = document.getElementById("connection-banner");
  banner.hidden = false;
  banner.textContent = "Connection to the server lost. Reconnecting…";
  for (let attempt = 1; ; attempt += 1) {
    await new Promise((resolve) => setTimeout(resolve, Math.min(1000 * attempt, 10000)));
    try {
      await connect();
    } catch {
      continue;
    }
    banner.hidden = true;
    if (ctx.user && !(await resumeSession())) {
      endSession();
      toast("Your session ended; please log in again.", "error");
      ctx.navigate("/login");
      return;
    }
    route();
    return;
  }
}

async function route() {
  const serial = ++routeSerial;
  let path = currentPath();
  if (!ctx.user && path !== "/login") {
    window.location.replace("#/login");
    return;
  }
  if (ctx.user && (path === "/login" || path === "")) {
    window.location.replace("#/replication");
    return;
  }
  let match = null;
  let loader = null;
  for (const [pattern, load] of ROUTES) {
    match = pattern.exec(path);
    if (match) {
      loader = load;
      break;
    }
  }
  if (!loader) {
    path = "/replication";
    window.location.replace(`#${path}`);
    return;
  }
  if (cleanup) {
    try {
      cleanup();
    } catch (error) {
      console.error(error);
    }
    cleanup = null;
  }
  for (const link of document.querySelectorAll(".topbar nav a")) {
    const active = path.startsWith(link.getAttribute("href").slice(1));
    if (active) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const container = main();
  container.replaceChildren(h("p", { class: "muted", testid: "loading" }, "Loading…"));
  const module = await loader();
  if (serial !== routeSerial) return;
  const page = h("div", { class: "page" });
  container.replaceChildren(page);
  try {
    cleanup = (await module.render(ctx, page, match.slice(1))) || null;
  } catch (error) {
    console.error(error);
    page.append(h("div", { class: "notice error", role: "alert" }, error.message || String(error)));
  }
  const heading = page.querySelector("h1");
  if (heading && document.activeElement === document.body) {
    heading.setAttribute("tabindex", "-1");
    heading.focus({ preventScroll: true });
  }
}

async function boot() {
  document.querySelector(".topbar [data-testid=logout]").addEventListener("click", logout);
  window.addEventListener("hashchange", route);
  try {
    await connect();
  } catch (error) {
    main().replaceChildren(h("div", { class: "notice error", role: "alert", testid: "connect-error" },
      h("p", {}, error instanceof ApiError ? error.message : "Cannot connect to the server."),
      button("Try again", () => window.location.reload(), { testid: "retry-connect" })));
    return;
  }
  await resumeSession();
  route();
}

boot();
