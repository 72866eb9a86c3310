// Periodic snapshot tasks (pool.snapshottask.*): list with state, add/edit, run now, delete; and a manual
// snapshot of any dataset (pool.snapshot.create, as TrueNAS's "Add snapshot" form).

import { datasetBrowser } from "../datasets.js";
import { scheduleEditor } from "../schedule.js";
import { breakable, button, confirmDialog, errorBlock, field, formatDate, h, modal, showErrors, splitList, toast } from "../ui.js";
import { jobProgress } from "../widgets.js";

export const DEFAULT_NAMING_SCHEMA = "auto-%Y-%m-%d_%H-%M";
const UNITS = ["HOUR", "DAY", "WEEK", "MONTH", "YEAR"];

function taskDialog(api, entry = null) {
  const title = entry ? `Edit snapshot task: ${entry.dataset}` : "Add periodic snapshot task";
  return modal(title, (close) => {
    const form = h("form", { testid: "snapshot-task-form", novalidate: true });
    const dataset = field({ label: "Dataset", field: "dataset", value: entry?.dataset || "" });
    const browser = datasetBrowser({ api, side: () => ({ transport: "LOCAL", sshCredentials: null }),
      onPick: (name) => { dataset.input.value = name; }, testid: "snapshot-dataset" });
    const recursive = field({ label: "Recursive", field: "recursive", kind: "checkbox", value: entry?.recursive });
    const exclude = field({ label: "Exclude (one child dataset per line)", field: "exclude", kind: "textarea",
      value: (entry?.exclude || []).join("\n") });
    const lifeValue = field({ label: "Snapshot lifetime", field: "lifetime_value", kind: "number", value: entry?.lifetime_value ?? 2 });
    const lifeUnit = field({ label: "Unit", field: "lifetime_unit", kind: "select", options: UNITS, value: entry?.lifetime_unit || "WEEK" });
    const schema = field({ label: "Naming schema", field: "naming_schema", value: entry?.naming_schema || DEFAULT_NAMING_SCHEMA,
      hint: "strftime codes; %Y %m %d %H %M are required (or %s alone)." });
    const schedule = scheduleEditor({ api, value: entry?.schedule || null, window: true, testid: "snapshot-schedule" });
    const allowEmpty = field({ label: "Allow taking empty snapshots", field: "allow_empty", kind: "checkbox",
      value: entry ? entry.allow_empty : true });
    const enabled = field({ label: "Enabled", field: "enabled", kind: "checkbox", value: entry ? entry.enabled : true });
    const submit = button("Save", null, { type: "submit", kind: "primary", testid: "snapshot-task-save" });
    form.append(h("div", { class: "form-errors", role: "alert" }), dataset.row, browser.element, recursive.row, exclude.row,
      h("div", { class: "inline" }, lifeValue.row, lifeUnit.row), schema.row, schedule.element, allowEmpty.row, enabled.row,
      h("div", { class: "actions" }, button("Cancel", () => close(), { testid: "snapshot-task-cancel" }), submit));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const data = {
        dataset: dataset.input.value.trim(),
        recursive: recursive.input.checked,
        exclude: splitList(exclude.input.value),
        lifetime_value: Number(lifeValue.input.value),
        lifetime_unit: lifeUnit.input.value,
        naming_schema: schema.input.value.trim(),
        schedule: schedule.get().schedule,
        allow_empty: allowEmpty.input.checked,
        enabled: enabled.input.checked,
      };
      submit.disabled = true;
      try {
        const saved = entry
          ? await api.call("pool.snapshottask.update", entry.id, data)
          : await api.call("pool.snapshottask.create", data);
        close(saved);
      } catch (error) {
        showErrors(form, error);
      } finally {
        submit.disabled = false;
      }
    });
    return form;
  }, { testid: "snapshot-task-dialog", wide: true });
}

/** TrueNAS's default name for a manual snapshot: manual-YYYY-MM-DD_HH-MM, local time. */
function manualSnapshotName(now = new Date()) {
  const pad = (n) => String(n).padStart(2, "0");
  return `manual-${now.getFullYear()}-${pad(now.getMonth() + 1)}-${pad(now.getDate())}_${pad(now.getHours())}-${pad(now.getMinutes())}`;
}

function manualSnapshotDialog(api) {
  return modal("Take snapshot now", (close) => {
    const form = h("form", { testid: "manual-snapshot-form", novalidate: true });
    const dataset = field({ label: "Dataset", field: "dataset" });
    const browser = datasetBrowser({ api, side: () => ({ transport: "LOCAL", sshCredentials: null }),
      onPick: (name) => { dataset.input.value = name; }, testid: "manual-snapshot-dataset" });
    const name = field({ label: "Name", field: "name", value: manualSnapshotName() });
    const recursive = field({ label: "Recursive (its child datasets too, in the same instant)", field: "recursive",
      kind: "checkbox" });
    const submit = button("Take snapshot", null, { type: "submit", kind: "primary", testid: "manual-snapshot-save" });
    form.append(h("div", { class: "form-errors", role: "alert" }), dataset.row, browser.element, name.row, recursive.row,
      h("div", { class: "actions" }, button("Cancel", () => close(), { testid: "manual-snapshot-cancel" }), submit));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      submit.disabled = true;
      try {
        close(await api.call("pool.snapshot.create", {
          dataset: dataset.input.value.trim(), name: name.input.value.trim(), recursive: recursive.input.checked,
        }));
      } catch (error) {
        showErrors(form, error);
      } finally {
        submit.disabled = false;
      }
    });
    return form;
  }, { testid: "manual-snapshot-dialog", wide: true });
}

export async function render(ctx, page) {
  const { api } = ctx;
  const body = h("div", { testid: "snapshot-task-list" }, h("p", { class: "muted" }, "Loading…"));
  page.append(h("div", { class: "page-head" }, h("h1", {}, "Periodic Snapshot Tasks"),
    button("Take snapshot now", async () => {
      const taken = await manualSnapshotDialog(api);
      if (taken) toast(`Snapshot ${taken.name} taken.`, "ok");
    }, { testid: "manual-snapshot-take" }),
    button("Add", async () => { if (await taskDialog(api)) load(); }, { kind: "primary", testid: "snapshot-task-add" })), body);
  const tasks = new Map();
  const progresses = new Map(); // task id -> progress widget, kept across redraws while a run is going
  const stops = [];

  async function load() {
    try {
      const list = await api.call("pool.snapshottask.query", [], { order_by: ["dataset"] });
      tasks.clear();
      for (const t of list) tasks.set(t.id, t);
    } catch (error) {
      body.replaceChildren(errorBlock(error, "Periodic snapshot tasks"));
      return false;
    }
    draw();
    return true;
  }

  function draw() {
    if (!tasks.size) {
      body.replaceChildren(h("p", { class: "empty card", testid: "snapshot-task-empty" }, "No periodic snapshot tasks yet."));
      return;
    }
    body.replaceChildren(h("div", { class: "table-wrap" }, h("table", { class: "list", testid: "snapshot-task-table" },
      h("thead", {}, h("tr", {}, ["Dataset", "Recursive", "Naming schema", "Keep for", "Schedule", "Next run", "Enabled",
        "State", "Last snapshot", "Actions"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, [...tasks.values()].map(row)))));
  }

  function row(t) {
    const state = t.state && typeof t.state === "object" ? t.state : { state: String(t.state || "PENDING") };
    if (!progresses.has(t.id)) {
      const widget = jobProgress(`snapshot-progress-${t.id}`);
      widget.element.hidden = true;
      progresses.set(t.id, widget);
    }
    const progress = progresses.get(t.id);
    const s = t.schedule || {};
    return h("tr", { testid: `snapshot-task-row-${t.id}` },
      h("td", { "data-label": "Dataset" }, h("strong", {}, breakable(t.dataset))),
      h("td", { "data-label": "Recursive" }, t.recursive ? "Yes" : "No"),
      h("td", { "data-label": "Naming schema" }, h("code", {}, t.naming_schema)),
      h("td", { "data-label": "Keep for" }, `${t.lifetime_value} ${String(t.lifetime_unit || "").toLowerCase()}(s)`),
      h("td", { "data-label": "Schedule" }, t.schedule_description || `cron ${s.minute} ${s.hour} ${s.dom} ${s.month} ${s.dow}`),
      h("td", { "data-label": "Next run", class: "nowrap" }, t.enabled ? formatDate(t.next_run) : "Disabled"),
      h("td", { "data-label": "Enabled" }, h("input", { type: "checkbox", checked: t.enabled, testid: `snapshot-task-enabled-${t.id}`,
        "aria-label": `Enabled: ${t.dataset}`,
        onchange: async (e) => {
          try {
            tasks.set(t.id, await api.call("pool.snapshottask.update", t.id, { enabled: e.target.checked }));
          } catch (error) {
            e.target.checked = !e.target.checked;
            toast(error.message, "error");
          }
        } })),
      h("td", { "data-label": "State" }, h("span", { class: `badge ${state.state}`, testid: `snapshot-task-state-${t.id}`,
        title: state.error || state.reason || "" }, state.state), state.error ? h("p", { class: "error" }, state.error) : null,
      progress.element),
      h("td", { "data-label": "Last snapshot" }, state.last_snapshot ? breakable(state.last_snapshot) : "—"),
      h("td", { "data-label": "Actions" }, h("div", { class: "row-actions" },
        button("Run now", async (e) => {
          e.target.disabled = true;
          progress.element.hidden = false;
          try {
            const { done } = await api.startJob("pool.snapshottask.run", [t.id], progress.update);
            await done;
            toast(`Snapshot of ${t.dataset} taken.`, "ok");
          } catch (error) {
            toast(`${t.dataset}: ${error.message}`, "error");
          } finally {
            e.target.disabled = false;
            progress.element.hidden = true;
          }
        }, { kind: "small primary", testid: `snapshot-task-run-${t.id}`, attrs: { "aria-label": `Run snapshot task ${t.dataset} now` } }),
        button("Edit", async () => { if (await taskDialog(api, t)) load(); },
          { kind: "small", testid: `snapshot-task-edit-${t.id}`, attrs: { "aria-label": `Edit snapshot task ${t.dataset}` } }),
        button("Delete", async () => {
          if (!(await confirmDialog(`Delete the snapshot task for ${t.dataset}? Existing snapshots stay.`, { confirmLabel: "Delete" }))) return;
          try {
            await api.call("pool.snapshottask.delete", t.id);
            load();
          } catch (error) {
            toast(error.message, "error");
          }
        }, { kind: "small danger", testid: `snapshot-task-delete-${t.id}`, attrs: { "aria-label": `Delete snapshot task ${t.dataset}` } }))));
  }

  if (await load()) {
    try {
      stops.push(await api.subscribe("pool.snapshottask.query", (event) => {
        if (event.msg === "removed") tasks.delete(event.id);
        else tasks.set(event.id, { ...(tasks.get(event.id) || { id: event.id }), ...(event.fields || {}) });
        draw();
      }));
    } catch (error) {
      console.warn(error);
    }
  }
  return () => stops.forEach((stop) => stop());
}
