// Replication tasks: list with live state, enable toggle, run now with progress, log, plan, edit, delete.

import { breakable, button, confirmDialog, errorBlock, formatDate, h, toast } from "../ui.js";
import { jobProgress, showJobLog, showPlan } from "../widgets.js";

const ACTIVE = new Set(["WAITING", "RUNNING"]);
// A finished run's progress bar stays in its row this long, so a quick run can be seen to have completed.
const RECENT_MS = 10 * 60 * 1000;

function recent(job) {
  const finished = job.time_finished instanceof Date ? job.time_finished.getTime() : null;
  return finished !== null && Date.now() - finished < RECENT_MS;
}

export async function render(ctx, page) {
  const { api } = ctx;
  const addButton = button("Add", () => ctx.navigate("/replication/new"), { kind: "primary", testid: "replication-add" });
  const body = h("div", { testid: "replication-list" }, h("p", { class: "muted" }, "Loading…"));
  page.append(h("div", { class: "page-head" }, h("h1", {}, "Replication Tasks"), addButton), body);

  const tasks = new Map(); // id -> entry
  const jobs = new Map(); // task id -> latest replication.run job
  const rows = new Map(); // id -> {tr, progress}
  const stops = [];
  let tbody = null;

  try {
    const list = await api.call("replication.query", [], { order_by: ["name"] });
    for (const entry of list) {
      tasks.set(entry.id, entry);
      if (entry.job) jobs.set(entry.id, entry.job);
    }
  } catch (error) {
    body.replaceChildren(errorBlock(error, "Replication tasks"));
    return null;
  }

  function renderTable() {
    if (!tasks.size) {
      tbody = null;
      body.replaceChildren(h("p", { class: "empty card", testid: "replication-empty" },
        "No replication tasks yet. Use Add to create one with the wizard."));
      return;
    }
    tbody = h("tbody");
    rows.clear();
    for (const entry of tasks.values()) tbody.append(buildRow(entry));
    body.replaceChildren(h("div", { class: "table-wrap" }, h("table", { class: "list", testid: "replication-table" },
      h("thead", {}, h("tr", {}, ["Name", "Direction", "Transport", "Source → Destination", "Schedule", "Enabled",
        "State", "Last snapshot", "Last run", "Actions"].map((t) => h("th", { scope: "col" }, t)))),
      tbody)));
  }

  function refreshRow(id) {
    const entry = tasks.get(id);
    const old = rows.get(id);
    if (!entry || !old || !tbody) {
      renderTable();
      return;
    }
    const focused = document.activeElement && old.tr.contains(document.activeElement)
      ? document.activeElement.getAttribute("data-testid") : null;
    const fresh = buildRow(entry);
    old.tr.replaceWith(fresh);
    if (focused) fresh.querySelector(`[data-testid="${focused}"]`)?.focus();
  }

  function buildRow(entry) {
    const id = entry.id;
    const state = entry.state && typeof entry.state === "object" ? entry.state : { state: String(entry.state || "PENDING") };
    const job = jobs.get(id) || entry.job || null;
    const running = Boolean(job && ACTIVE.has(job.state));
    const progress = jobProgress(`replication-progress-${id}`);
    progress.element.hidden = !(job && (running || recent(job)));
    if (job) progress.update(job);

    const toggle = h("input", { type: "checkbox", checked: entry.enabled, testid: `replication-enabled-${id}`,
      "aria-label": `Enabled: ${entry.name}`,
      onchange: async (event) => {
        const enabled = event.target.checked;
        try {
          const updated = await api.call("replication.update", id, { enabled });
          tasks.set(id, { ...tasks.get(id), ...updated });
        } catch (error) {
          event.target.checked = !enabled;
          toast(`Could not ${enabled ? "enable" : "disable"} ${entry.name}: ${error.message}`, "error");
        }
      } });

    const badge = h("button", { type: "button", class: `badge ${state.state}`, testid: `replication-state-${id}`,
      "aria-label": `State ${state.state}: open the log of ${entry.name}`,
      onclick: () => openLog(entry, state) }, state.state || "PENDING");

    const run = button("Run now", () => runNow(entry), { kind: "small primary", testid: `replication-run-${id}`,
      attrs: { hidden: running, "aria-label": `Run ${entry.name} now` } });
    const actions = h("div", { class: "row-actions" },
      run,
      button("Plan", () => showPlan(api, id, `Plan for ${entry.name}`), { kind: "small", testid: `replication-plan-${id}`,
        attrs: { "aria-label": `Show the plan of ${entry.name}` } }),
      button("Edit", () => ctx.navigate(`/replication/${id}/edit`), { kind: "small", testid: `replication-edit-${id}`,
        attrs: { "aria-label": `Edit ${entry.name}` } }),
      button("Delete", () => remove(entry), { kind: "small danger", testid: `replication-delete-${id}`,
        attrs: { "aria-label": `Delete ${entry.name}` } }));

    const sources = (entry.source_datasets || []).join(", ");
    const tr = h("tr", { testid: `replication-row-${id}`, "data-task-id": id },
      h("td", { "data-label": "Name" }, h("strong", {}, breakable(entry.name))),
      h("td", { "data-label": "Direction" }, entry.direction),
      h("td", { "data-label": "Transport" }, entry.transport),
      h("td", { "data-label": "Source → Destination" }, breakable(`${sources} → ${entry.target_dataset}`)),
      h("td", { "data-label": "Schedule", testid: `replication-schedule-${id}` }, scheduleText(entry)),
      h("td", { "data-label": "Enabled" }, toggle),
      h("td", { "data-label": "State" }, badge,
        state.error || state.reason ? h("p", { class: `state-detail ${state.error ? "error" : "muted"}` }, state.error || state.reason) : null,
        progress.element),
      h("td", { "data-label": "Last snapshot" }, state.last_snapshot ? breakable(state.last_snapshot) : "None sent yet"),
      h("td", { "data-label": "Last run" }, formatDate(state.datetime)),
      h("td", { "data-label": "Actions" }, actions));
    rows.set(id, { tr, progress });
    return tr;
  }

  async function openLog(entry, state) {
    let job = jobs.get(entry.id) || entry.job || null;
    if (job && job.id != null && !job.logs_excerpt && !ACTIVE.has(job.state)) {
      try {
        const found = await api.call("core.get_jobs", [["id", "=", job.id]]);
        if (found.length) job = found[0];
      } catch (error) {
        console.warn(error);
      }
    }
    await showJobLog(api, job, { title: `Log: ${entry.name}`, state });
  }

  async function runNow(entry) {
    try {
      const { id: jobId, done } = await api.startJob("replication.run", [entry.id], (job) => trackJob(entry.id, job));
      toast(`${entry.name}: started (job ${jobId}).`);
      await done;
      toast(`${entry.name}: replication finished.`, "ok");
    } catch (error) {
      toast(`${entry.name}: ${error.message}`, "error");
    }
  }

  function trackJob(taskId, job) {
    const before = jobs.get(taskId);
    jobs.set(taskId, job);
    const row = rows.get(taskId);
    if (!row) return;
    const wasActive = before && ACTIVE.has(before.state);
    if (ACTIVE.has(job.state) && wasActive) {
      row.progress.update(job); // only the progress changed: keep the row (and focus) as is
    } else {
      refreshRow(taskId);
    }
  }

  async function remove(entry) {
    const ok = await confirmDialog(`Delete the replication task "${entry.name}"? Snapshots already replicated stay.`,
      { title: "Delete replication task", confirmLabel: "Delete" });
    if (!ok) return;
    try {
      await api.call("replication.delete", entry.id);
      tasks.delete(entry.id);
      renderTable();
      toast(`Deleted ${entry.name}.`, "ok");
    } catch (error) {
      toast(error.message, "error");
    }
  }

  renderTable();

  // Live updates: CRUD and scheduler state changes, and jobs of scheduled or other clients' runs.
  try {
    stops.push(await api.subscribe("replication.query", (event) => {
      if (event.msg === "removed") {
        tasks.delete(event.id);
        renderTable();
        return;
      }
      const fields = { ...(event.fields || {}) };
      if (fields.state && typeof fields.state === "object" && "job" in fields.state) {
        const { job, ...state } = fields.state; // state events carry the job nested (§3)
        fields.state = state;
        if (job) jobs.set(event.id, job);
      }
      if (fields.job) jobs.set(event.id, fields.job);
      const known = tasks.has(event.id);
      tasks.set(event.id, { ...(tasks.get(event.id) || { id: event.id }), ...fields });
      if (known) refreshRow(event.id);
      else renderTable();
    }));
  } catch (error) {
    page.append(h("p", { class: "muted", testid: "live-updates-off" }, `Live updates are off: ${error.message}`));
  }
  try {
    stops.push(await api.subscribe("core.get_jobs", (event) => {
      const job = api.jobs.get(event.id);
      if (job && job.method === "replication.run" && Array.isArray(job.arguments) && tasks.has(job.arguments[0])) {
        trackJob(job.arguments[0], job);
      }
    }));
  } catch (error) {
    console.warn(error);
  }

  return () => stops.forEach((stop) => stop());
}

function scheduleText(entry) {
  if (entry.schedule_description) return entry.schedule_description;
  if (!entry.auto) return "Manual (run on demand)";
  if (!entry.schedule) return "After its periodic snapshot tasks";
  const s = entry.schedule;
  return `cron ${s.minute} ${s.hour} ${s.dom} ${s.month} ${s.dow}`;
}
