// The replication wizard (ADD): What and Where → When → Review, as in TrueNAS's "Remote Replication" guide.

import { ApiError } from "../api.js";
import { datasetBrowser, loadDatasets } from "../datasets.js";
import { scheduleEditor } from "../schedule.js";
import { button, clearErrors, errorBlock, field, h, showErrors, splitList, toast } from "../ui.js";
import { planError, renderPlan } from "../widgets.js";
import { listConnections, sshConnectionDialog } from "./ssh-connections.js";
import { DEFAULT_NAMING_SCHEMA } from "./snapshot-tasks.js";

export const KEY_IN_DATABASE = "$TrueNAS";
const STEPS = ["What and Where", "When", "Review"];
const NEW_CONNECTION = "__new__";
const DAILY = { minute: "0", hour: "0", dom: "*", month: "*", dow: "*" };

function errorSlot(name) {
  return h("p", { class: "field-error", role: "alert", hidden: true, "data-error-for": name });
}

/** Show one message in a field row's error slot (for answers that are not a whole form's validation). */
function fieldMessage(row, message) {
  const slot = row.querySelector(".field-error");
  slot.hidden = !message;
  slot.textContent = message || "";
  const control = row.querySelector("input, select, textarea");
  if (message) control?.setAttribute("aria-invalid", "true");
  else control?.removeAttribute("aria-invalid");
}

function radios(legend, name, choices, value, onchange) {
  return h("fieldset", { class: "segmented", testid: `wizard-${name}` }, h("legend", {}, legend),
    ...choices.map(([v, label]) => h("span", {},
      h("input", { type: "radio", name: `wizard-${name}`, id: `wizard-${name}-${v}`, value: v, checked: v === value,
        testid: `wizard-${name}-${v.toLowerCase()}`, onchange: () => onchange(v) }),
      h("label", { for: `wizard-${name}-${v}` }, label))));
}

function randomHexKey() {
  const bytes = new Uint8Array(32);
  crypto.getRandomValues(bytes);
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Snapshot tasks whose snapshots cover `datasets` (same dataset, or a recursive task on an ancestor). */
export function coveringTasks(tasks, datasets) {
  return tasks.filter((t) => datasets.some((d) => d === t.dataset || (t.recursive && d.startsWith(`${t.dataset}/`))));
}

export async function render(ctx, page) {
  const { api } = ctx;
  const w = {
    step: 0, sourceLocation: "LOCAL", destLocation: "LOCAL", sources: [], nameTouched: false,
    offerSnapshotTask: false, countedSchemas: [], connections: [], saved: [], datasetCache: new Map(),
  };
  const notices = h("div", {});
  page.append(h("div", { class: "page-head" }, h("h1", {}, "Add Replication Task"),
    button("Cancel", () => ctx.navigate("/replication"), { testid: "wizard-cancel" })), notices);

  try {
    w.saved = await api.call("replication.query", [], { order_by: ["name"] });
  } catch (error) {
    notices.append(errorBlock(error, "Replication"));
  }
  try {
    w.connections = await listConnections(api);
  } catch (error) {
    notices.append(errorBlock(error, "SSH connections"));
  }

  // --- controls ---------------------------------------------------------------------------------------
  const form = h("form", { class: "wizard", testid: "replication-wizard", novalidate: true });
  const formErrors = h("div", { class: "form-errors", role: "alert", testid: "wizard-errors" });

  const load = field({ label: "Load previous replication task", field: "load", kind: "select", testid: "wizard-load",
    options: [["", "—"], ...w.saved.map((t) => [String(t.id), t.name])],
    hint: "Pre-fills the wizard; saving creates a new task and leaves the loaded one as it is." });
  load.row.hidden = !w.saved.length;

  const connectionSelect = (side) => field({ label: "SSH connection", field: "ssh_credentials", kind: "select",
    testid: `wizard-${side}-connection`,
    options: [["", "Choose a connection"], ...w.connections.map((c) => [String(c.id), c.name]),
      [NEW_CONNECTION, "Create new SSH connection…"]] });
  const sourceConn = connectionSelect("source");
  const destConn = connectionSelect("destination");

  const sourceInput = field({ label: "Source datasets", field: "source_datasets", testid: "wizard-source-input",
    hint: "Type a dataset name and press Enter (or Add), or browse. Several sources are allowed." });
  const chips = h("ul", { class: "sources-list", testid: "wizard-sources", "aria-label": "Chosen sources" });
  const addSource = button("Add", () => { addSources(splitList(sourceInput.input.value)); sourceInput.input.value = ""; },
    { kind: "small", testid: "wizard-source-add" });
  const sourceControl = h("div", { class: "control-row" });
  sourceInput.input.replaceWith(sourceControl);
  sourceControl.append(sourceInput.input, addSource);
  const sourceBrowser = datasetBrowser({ api, multiple: true, testid: "wizard-source", side: () => sideOf("source"),
    selected: () => w.sources, onPick: (name, checked) => (checked ? addSources([name]) : removeSource(name)) });
  const recursive = field({ label: "Recursive", field: "recursive", kind: "checkbox", testid: "wizard-recursive",
    hint: "Also replicate the snapshots of every child dataset." });
  const schema = field({ label: "Snapshot naming schema", field: "naming_schema", testid: "wizard-naming-schema",
    hint: " " });
  const schemaHint = schema.row.querySelector(".hint");
  // Whichever of these the server names, the message belongs next to the naming schema.
  schema.row.append(errorSlot("also_include_naming_schema"), errorSlot("name_regex"), errorSlot("periodic_snapshot_tasks"));
  const count = h("p", { class: "hint count", testid: "wizard-snapshot-count", "aria-live": "polite" });
  const createTask = field({ label: "Create a periodic snapshot task for the sources and take a snapshot now",
    field: "create_snapshot_task", kind: "checkbox", value: true, testid: "wizard-create-snapshot-task",
    hint: "The sources have no snapshots yet. When you start the replication, a snapshot task on the replication's "
      + "schedule (daily for Run Once; keeps snapshots 2 weeks) is created and takes the first snapshot at once." });
  createTask.row.classList.add("notice", "info");
  createTask.row.hidden = true;

  const target = field({ label: "Destination dataset", field: "target_dataset", testid: "wizard-target",
    hint: "Choose or type a path. A new name at the end of the path creates a new dataset." });
  const targetHint = h("p", { class: "hint", testid: "wizard-target-hint", "aria-live": "polite" });
  target.row.insertBefore(targetHint, target.row.querySelector(".field-error"));
  const destBrowser = datasetBrowser({ api, testid: "wizard-destination", side: () => sideOf("destination"),
    refuseVolumes: true, selected: () => [target.input.value],
    onPick: (name) => { target.input.value = name; targetChanged(); } });

  const encryption = field({ label: "Encryption", field: "encryption", kind: "checkbox", testid: "wizard-encryption",
    hint: "Encrypt the new destination dataset with its own key." });
  const keyFormat = field({ label: "Encryption key format", field: "encryption_key_format", kind: "select",
    options: [["HEX", "Hex"], ["PASSPHRASE", "Passphrase"]], testid: "wizard-key-format" });
  const key = field({ label: "Encryption key", field: "encryption_key", kind: "password", testid: "wizard-key",
    attrs: { autocomplete: "new-password" } });
  const generate = button("Generate key", () => { key.input.value = randomHexKey(); key.input.type = "text"; },
    { kind: "small", testid: "wizard-generate-key" });
  const storeKey = field({ label: "Store the encryption key in the sending system's database", field: "store_key",
    kind: "checkbox", value: true, testid: "wizard-store-key" });
  const keyLocation = field({ label: "Encryption key location on the target system", field: "encryption_key_location",
    testid: "wizard-key-location", hint: "A file path; the key is written there for the target to unlock the data." });
  storeKey.row.append(errorSlot("encryption_key_location"));
  const encryptionPart = h("div", { class: "encryption-options" }, keyFormat.row, key.row, generate, storeKey.row,
    keyLocation.row);

  let security = "SSH";
  const netcatWarning = h("p", { class: "notice warn", testid: "wizard-netcat-warning", role: "note" },
    h("strong", {}, "Not encrypted. "),
    "SSH+NETCAT sends the data in the clear: it is faster, but anyone on the network path can read it. "
    + "Use it only inside a network you fully trust.");
  const portMin = field({ label: "Netcat ports: from", field: "netcat_active_side_port_min", kind: "number",
    testid: "wizard-port-min", attrs: { min: 1, max: 65535 } });
  const portMax = field({ label: "to", field: "netcat_active_side_port_max", kind: "number", testid: "wizard-port-max",
    attrs: { min: 1, max: 65535 } });
  const netcatPart = h("div", {}, netcatWarning, h("div", { class: "inline" }, portMin.row, portMax.row),
    h("p", { class: "hint" }, "Leave empty for any free port; the advanced screen has every netcat option."));
  const securityPart = h("fieldset", { testid: "wizard-security-part" }, h("legend", {}, "Security"),
    radios("Transport", "security", [["SSH", "Encryption (SSH)"], ["SSH+NETCAT", "No encryption (SSH+NETCAT)"]],
      security, (v) => { security = v; sync(); }),
    netcatPart, errorSlot("transport"), errorSlot("netcat_active_side"));

  const name = field({ label: "Task name", field: "name", testid: "wizard-name",
    hint: "Suggested from the sources and destination; you can overwrite it." });
  name.input.addEventListener("input", () => { w.nameTouched = name.input.value !== ""; });

  const schedule = scheduleEditor({ api, runOnce: true, window: false, label: "Replication schedule",
    testid: "wizard-schedule", value: DAILY });
  schedule.element.append(errorSlot("auto"), errorSlot("only_matching_schedule"));
  let retention = "SOURCE";
  const lifeValue = field({ label: "Snapshot lifetime", field: "lifetime_value", kind: "number", value: 2,
    testid: "wizard-lifetime-value", attrs: { min: 1 } });
  const lifeUnit = field({ label: "Unit", field: "lifetime_unit", kind: "select", value: "WEEK",
    options: [["HOUR", "Hours"], ["DAY", "Days"], ["WEEK", "Weeks"], ["MONTH", "Months"], ["YEAR", "Years"]],
    testid: "wizard-lifetime-unit" });
  const customLife = h("div", { class: "inline" }, lifeValue.row, lifeUnit.row);
  const retentionPart = h("fieldset", { testid: "wizard-retention-part" }, h("legend", {}, "Destination snapshot lifetime"),
    radios("Keep snapshots on the destination", "retention",
      [["SOURCE", "Same as source"], ["CUSTOM", "Custom"], ["NONE", "Never delete"]], retention,
      (v) => { retention = v; sync(); }),
    customLife, errorSlot("retention_policy"), errorSlot("lifetimes"));

  const review = h("div", { testid: "wizard-review" });
  const planBox = h("div", { testid: "wizard-plan" });

  const sourceSide = h("fieldset", { testid: "wizard-source-part" }, h("legend", {}, "Source"),
    radios("Source location", "source-location", [["LOCAL", "On this system"], ["REMOTE", "On a different system"]],
      w.sourceLocation, (v) => setSourceLocation(v)),
    sourceConn.row, sourceInput.row, chips, sourceBrowser.element,
    errorSlot("exclude"), recursive.row, schema.row, count, createTask.row, errorSlot("direction"));
  const destRadios = radios("Destination location", "destination-location",
    [["LOCAL", "On this system"], ["REMOTE", "On a different system"]], w.destLocation, (v) => setDestLocation(v));
  const destSide = h("fieldset", { testid: "wizard-destination-part" }, h("legend", {}, "Destination"),
    destRadios, destConn.row, target.row, destBrowser.element, encryption.row, encryptionPart);

  const sections = [
    h("section", { "data-step": 0, "aria-label": STEPS[0], testid: "wizard-step-0" },
      load.row, h("div", { class: "sides" }, sourceSide, destSide), securityPart, name.row),
    h("section", { "data-step": 1, "aria-label": STEPS[1], testid: "wizard-step-1" }, schedule.element, retentionPart),
    h("section", { "data-step": 2, "aria-label": STEPS[2], testid: "wizard-step-2" },
      h("h2", {}, "Summary"), review, h("h2", {}, "Plan preview"), planBox),
  ];
  const stepList = h("ol", { class: "steps", testid: "wizard-steps" },
    STEPS.map((s, i) => h("li", { "data-step": i }, `${i + 1}. ${s}`)));
  const back = button("Back", () => go(w.step - 1), { testid: "wizard-back" });
  const next = button("Next", () => go(w.step + 1), { kind: "primary", testid: "wizard-next" });
  const advanced = button("Advanced Replication Creation", openAdvanced, { testid: "wizard-advanced" });
  const start = button("START REPLICATION", null, { type: "submit", kind: "primary", testid: "wizard-start" });
  form.append(stepList, formErrors, ...sections,
    h("div", { class: "actions wizard-actions" }, advanced, h("span", { class: "spacer" }), back, next, start));
  page.append(form);

  // --- behaviour --------------------------------------------------------------------------------------
  function sideOf(which) {
    const location = which === "source" ? w.sourceLocation : w.destLocation;
    if (location === "LOCAL") return { transport: "LOCAL", sshCredentials: null };
    const value = (which === "source" ? sourceConn : destConn).input.value;
    return value && value !== NEW_CONNECTION ? { transport: "SSH", sshCredentials: Number(value) } : null;
  }

  function setSourceLocation(v) {
    w.sourceLocation = v;
    // One side is always this system: a remote source means a local destination (PULL).
    if (v === "REMOTE") setDestLocation("LOCAL");
    sync();
    sourcesChanged();
  }

  function setDestLocation(v) {
    w.destLocation = v;
    destRadios.querySelector(`input[value="${v}"]`).checked = true;
    sync();
    targetChanged();
  }

  function remote() {
    return w.sourceLocation === "REMOTE" || w.destLocation === "REMOTE";
  }

  function sync() {
    sourceConn.row.hidden = w.sourceLocation !== "REMOTE";
    destConn.row.hidden = w.destLocation !== "REMOTE";
    destRadios.querySelector('input[value="REMOTE"]').disabled = w.sourceLocation === "REMOTE";
    const remoteSource = w.sourceLocation === "REMOTE";
    schema.input.required = remoteSource;
    schema.row.querySelector("label").textContent = remoteSource
      ? "Snapshot naming schema (required)" : "Also include naming schema (optional)";
    schemaHint.textContent = remoteSource
      ? "Which remote snapshots to replicate, for example auto-%Y-%m-%d_%H-%M. Several: separate with commas."
      : "Snapshots of the periodic snapshot tasks on the sources are included anyway; add a schema here to include "
        + "other snapshots too, for example manual-%Y-%m-%d_%H-%M.";
    encryptionPart.hidden = !encryption.input.checked;
    keyLocation.row.hidden = storeKey.input.checked;
    generate.hidden = keyFormat.input.value !== "HEX";
    securityPart.hidden = !remote();
    netcatPart.hidden = security !== "SSH+NETCAT";
    customLife.hidden = retention !== "CUSTOM";
    createTask.row.hidden = !(w.offerSnapshotTask && w.sourceLocation === "LOCAL");
    sections.forEach((s, i) => { s.hidden = i !== w.step; });
    stepList.querySelectorAll("li").forEach((li, i) => {
      if (i === w.step) li.setAttribute("aria-current", "step");
      else li.removeAttribute("aria-current");
    });
    back.disabled = w.step === 0;
    next.hidden = w.step === STEPS.length - 1;
    start.hidden = w.step !== STEPS.length - 1;
  }

  function go(step) {
    w.step = Math.max(0, Math.min(STEPS.length - 1, step));
    sync();
    if (w.step === 2) showReview();
    sections[w.step].querySelector("input:not([type=hidden]):not([disabled]), select, textarea, button")?.focus();
    window.scrollTo?.(0, 0);
  }

  function drawChips() {
    chips.replaceChildren(...w.sources.map((s) => h("li", { class: "chip" }, s,
      h("button", { type: "button", "aria-label": `Remove ${s}`, testid: `wizard-source-remove-${s}`,
        onclick: () => removeSource(s) }, "×"))));
  }

  function addSources(names) {
    for (const n of names) if (!w.sources.includes(n)) w.sources.push(n);
    drawChips();
    sourcesChanged();
  }

  function removeSource(n) {
    w.sources = w.sources.filter((s) => s !== n);
    drawChips();
    sourcesChanged();
  }

  sourceInput.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      addSource.click();
    }
  });
  // Typing a name and moving on without pressing Enter still chooses it.
  sourceInput.input.addEventListener("change", () => {
    if (sourceInput.input.value.trim()) addSource.click();
  });

  function suggestName() {
    if (w.nameTouched) return;
    const tgt = target.input.value.trim();
    name.input.value = w.sources.length && tgt ? `${w.sources.join(",")} - ${tgt}` : "";
  }

  /** Dataset names of one side, fetched once per side and connection. */
  async function datasetsOf(where) {
    const cacheKey = `${where.transport}:${where.sshCredentials ?? ""}`;
    if (!w.datasetCache.has(cacheKey)) {
      const request = loadDatasets(api, where.transport, where.sshCredentials);
      request.catch(() => w.datasetCache.delete(cacheKey));
      w.datasetCache.set(cacheKey, request);
    }
    return w.datasetCache.get(cacheKey);
  }

  let targetSerial = 0;
  let targetTimer = null;
  function targetChanged() {
    suggestName();
    clearTimeout(targetTimer);
    targetTimer = setTimeout(describeTarget, 300);
  }

  /** Say whether the typed destination exists, will be created, or cannot be created. */
  async function describeTarget() {
    const mine = ++targetSerial;
    const path = target.input.value.trim().replace(/\/+$/, "");
    const where = sideOf("destination");
    if (!path || !where) {
      targetHint.textContent = "";
      return;
    }
    let list;
    try {
      if (!targetHint.textContent) targetHint.textContent = "Checking the destination…";
      list = await datasetsOf(where);
    } catch (error) {
      if (mine === targetSerial) targetHint.textContent = `Could not list the destination's datasets: ${error.message}`;
      return;
    }
    if (mine !== targetSerial) return;
    const found = list.find((d) => d.name === path);
    const parent = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : null;
    if (found && found.type === "VOLUME" && w.destLocation === "REMOTE") {
      targetHint.textContent = `${path} is a zvol: a zvol cannot be a remote replication destination.`;
    } else if (found) {
      targetHint.textContent = `${path} exists; replicated snapshots are received into it.`;
    } else if (parent && list.some((d) => d.name === parent)) {
      targetHint.textContent = `${path} does not exist yet: the first run creates it under ${parent}.`;
    } else if (parent) {
      targetHint.textContent = `${path} does not exist yet; the missing parents up to it are created too.`;
    } else {
      targetHint.textContent = `There is no pool named ${path}: choose a dataset inside a pool.`;
    }
  }

  let countSerial = 0;
  async function sourcesChanged() {
    suggestName();
    const mine = ++countSerial;
    w.offerSnapshotTask = false;
    w.countedSchemas = [];
    fieldMessage(schema.row, "");
    const where = sideOf("source");
    if (!w.sources.length || !where) {
      count.textContent = "";
      sync();
      return;
    }
    let schemas = splitList(schema.input.value);
    if (!schemas.length && where.transport !== "LOCAL") {
      count.textContent = "Enter the naming schema of the remote snapshots to see how many will replicate.";
      sync();
      return;
    }
    if (!schemas.length) {
      // Nothing typed: count with the schemas this system's tasks use (the snapshots they will replicate).
      try {
        schemas = await api.call("replication.list_naming_schemas");
      } catch { /* counted with the default schema below */ }
      if (!schemas.length) schemas = [DEFAULT_NAMING_SCHEMA];
    }
    count.textContent = "Counting snapshots…";
    try {
      const result = await api.call("replication.count_eligible_manual_snapshots", {
        datasets: w.sources, naming_schema: schemas, transport: where.transport, ssh_credentials: where.sshCredentials,
      });
      if (mine !== countSerial) return;
      w.countedSchemas = schemas;
      count.textContent = result.total === 0
        ? "The sources have no snapshots yet."
        : `${result.eligible} of ${result.total} snapshot(s) will replicate (those named like ${schemas.join(", ")}).`;
      w.offerSnapshotTask = where.transport === "LOCAL" && result.total === 0;
    } catch (error) {
      if (mine !== countSerial) return;
      const placed = error instanceof ApiError && error.fieldErrors.find((e) => /naming_schema/.test(e.attribute || ""));
      if (placed) {
        fieldMessage(schema.row, placed.message);
        count.textContent = "";
      } else {
        count.textContent = `Could not count snapshots: ${error.message}`;
      }
    }
    sync();
  }

  for (const [select, side] of [[sourceConn, "source"], [destConn, "destination"]]) {
    select.input.addEventListener("change", async () => {
      if (select.input.value === NEW_CONNECTION) {
        const created = await sshConnectionDialog(api);
        if (created) {
          w.connections.push(created);
          for (const s of [sourceConn, destConn]) {
            s.input.insertBefore(h("option", { value: String(created.id) }, created.name), s.input.lastElementChild);
          }
          select.input.value = String(created.id);
        } else {
          select.input.value = "";
        }
      }
      if (side === "source") sourcesChanged();
      else targetChanged();
    });
  }
  schema.input.addEventListener("change", sourcesChanged);
  target.input.addEventListener("input", targetChanged);
  for (const el of [encryption.input, storeKey.input, keyFormat.input]) el.addEventListener("change", sync);

  load.input.addEventListener("change", () => {
    const task = w.saved.find((t) => String(t.id) === load.input.value);
    if (task) prefill(task);
  });

  function prefill(t) {
    w.sourceLocation = t.direction === "PULL" ? "REMOTE" : "LOCAL";
    w.destLocation = t.direction === "PUSH" && t.transport !== "LOCAL" ? "REMOTE" : "LOCAL";
    for (const [group, value] of [["source-location", w.sourceLocation], ["destination-location", w.destLocation]]) {
      form.querySelector(`input[name="wizard-${group}"][value="${value}"]`).checked = true;
    }
    const credId = t.ssh_credentials && typeof t.ssh_credentials === "object" ? t.ssh_credentials.id : t.ssh_credentials;
    (w.sourceLocation === "REMOTE" ? sourceConn : destConn).input.value = credId ? String(credId) : "";
    w.sources = [...(t.source_datasets || [])];
    drawChips();
    target.input.value = t.target_dataset || "";
    recursive.input.checked = Boolean(t.recursive);
    schema.input.value = [...(t.naming_schema || []), ...(t.also_include_naming_schema || [])].join(", ");
    encryption.input.checked = Boolean(t.encryption);
    keyFormat.input.value = t.encryption_key_format || "HEX";
    storeKey.input.checked = !t.encryption_key_location || t.encryption_key_location === KEY_IN_DATABASE;
    keyLocation.input.value = storeKey.input.checked ? "" : t.encryption_key_location;
    if (t.transport !== "LOCAL") {
      security = t.transport;
      form.querySelector(`input[name="wizard-security"][value="${security}"]`).checked = true;
    }
    portMin.input.value = t.netcat_active_side_port_min ?? "";
    portMax.input.value = t.netcat_active_side_port_max ?? "";
    schedule.set(t.auto ? t.schedule : null);
    retention = t.retention_policy || "SOURCE";
    form.querySelector(`input[name="wizard-retention"][value="${retention}"]`).checked = true;
    lifeValue.input.value = t.lifetime_value ?? 2;
    lifeUnit.input.value = t.lifetime_unit || "WEEK";
    w.nameTouched = false;
    sourcesChanged();
    targetChanged();
    sync();
  }

  function offerTaken() {
    return !createTask.row.hidden && createTask.input.checked;
  }

  /** The task definition (create shape) the wizard's choices describe. */
  async function buildTask() {
    const direction = w.sourceLocation === "REMOTE" ? "PULL" : "PUSH";
    const transport = remote() ? security : "LOCAL";
    const conn = (w.sourceLocation === "REMOTE" ? sourceConn : destConn).input.value;
    const { mode, schedule: cron } = schedule.get();
    const schemas = splitList(schema.input.value);
    const task = {
      name: name.input.value.trim(),
      direction, transport,
      ssh_credentials: transport === "LOCAL" || !conn || conn === NEW_CONNECTION ? null : Number(conn),
      source_datasets: [...w.sources],
      target_dataset: target.input.value.trim(),
      recursive: recursive.input.checked,
      auto: mode !== "once",
      schedule: mode === "once" ? null : cron,
      retention_policy: retention,
      enabled: true,
    };
    if (direction === "PULL") {
      task.naming_schema = schemas;
    } else {
      task.also_include_naming_schema = schemas;
      if (w.sources.length) {
        try {
          task.periodic_snapshot_tasks = coveringTasks(await api.call("pool.snapshottask.query"), w.sources)
            .map((t) => t.id);
        } catch { /* the server's validation explains what is missing */ }
      }
      // Nothing typed and no snapshot task: the snapshots counted above are the ones to replicate.
      if (!schemas.length && !(task.periodic_snapshot_tasks || []).length && !offerTaken()) {
        task.also_include_naming_schema = [...w.countedSchemas];
      }
    }
    if (retention === "CUSTOM") {
      task.lifetime_value = Number(lifeValue.input.value);
      task.lifetime_unit = lifeUnit.input.value;
    }
    if (encryption.input.checked) {
      Object.assign(task, {
        encryption: true,
        encryption_key_format: keyFormat.input.value,
        encryption_key: key.input.value || null,
        encryption_key_location: storeKey.input.checked ? KEY_IN_DATABASE : keyLocation.input.value.trim() || null,
      });
    }
    if (transport === "SSH+NETCAT") {
      task.netcat_active_side = "LOCAL";
      if (portMin.input.value) task.netcat_active_side_port_min = Number(portMin.input.value);
      if (portMax.input.value) task.netcat_active_side_port_max = Number(portMax.input.value);
    }
    return task;
  }

  let reviewSerial = 0;
  async function showReview() {
    const mine = ++reviewSerial;
    const task = await buildTask();
    const { mode } = schedule.get();
    const described = form.querySelector("[data-testid=wizard-schedule-description]").textContent;
    const connection = w.connections.find((c) => c.id === task.ssh_credentials);
    const where = (location) => (location === "LOCAL" ? "this system" : connection ? connection.name : "(no connection)");
    review.replaceChildren(h("dl", { class: "summary" },
      ...[["Name", task.name || "(none)"],
        ["Direction", `${task.direction}, ${{ LOCAL: "on this system", SSH: "over SSH (encrypted)",
          "SSH+NETCAT": "over SSH+NETCAT (not encrypted)" }[task.transport]}`],
        ["Sources", `${task.source_datasets.join(", ") || "(none)"} on ${where(w.sourceLocation)}`],
        ["Destination", `${task.target_dataset || "(none)"} on ${where(w.destLocation)}`],
        ["Schedule", mode === "once" ? "Run once, right after saving" : described || mode],
        ["Destination retention", { SOURCE: "Same as source", CUSTOM: `${task.lifetime_value} ${String(task.lifetime_unit).toLowerCase()}(s)`,
          NONE: "Never delete" }[retention]],
        ["Encryption", task.encryption ? `${task.encryption_key_format}, key ${task.encryption_key_location === KEY_IN_DATABASE
          ? "stored in this system's database" : `at ${task.encryption_key_location}`}` : "No"],
      ].flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
    if (offerTaken()) {
      planBox.replaceChildren(h("p", { class: "notice info", testid: "wizard-plan-after-snapshot" },
        "The sources have no snapshots yet, so there is nothing to preview. START REPLICATION creates the periodic "
        + "snapshot task, takes the first snapshot, and the first run sends it in full."));
      return;
    }
    planBox.replaceChildren(h("p", { class: "muted" }, "Computing the plan…"));
    try {
      const plan = await api.call("replication.plan", task);
      if (mine === reviewSerial) planBox.replaceChildren(renderPlan(plan));
    } catch (error) {
      if (mine === reviewSerial) planBox.replaceChildren(planError(error));
    }
  }

  async function openAdvanced() {
    ctx.drafts.set("replication", await buildTask());
    ctx.navigate("/replication/advanced");
  }

  /** Create one periodic snapshot task per source (on the replication's schedule); returns their ids. */
  async function createSnapshotTasks(cron) {
    const ids = [];
    const naming = splitList(schema.input.value)[0] || DEFAULT_NAMING_SCHEMA;
    for (const dataset of w.sources) {
      const created = await api.call("pool.snapshottask.create", {
        dataset, recursive: recursive.input.checked, naming_schema: naming,
        lifetime_value: 2, lifetime_unit: "WEEK", enabled: true,
        schedule: { ...(cron || DAILY), begin: "00:00", end: "23:59" },
      });
      ids.push(created.id);
    }
    return ids;
  }

  async function removeSnapshotTasks(ids) {
    for (const id of ids) {
      try {
        await api.call("pool.snapshottask.delete", id);
      } catch (error) {
        console.warn(error);
      }
    }
  }

  async function takeSnapshots(ids) {
    for (const id of ids) {
      const { done } = await api.startJob("pool.snapshottask.run", [id]);
      await done;
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (w.step < STEPS.length - 1) {
      go(w.step + 1); // Enter in a field moves on; only the last step saves
      return;
    }
    clearErrors(form);
    start.disabled = true;
    let created = [];
    try {
      const task = await buildTask();
      if (offerTaken()) {
        created = await createSnapshotTasks(task.schedule);
        task.periodic_snapshot_tasks = [...new Set([...(task.periodic_snapshot_tasks || []), ...created])];
      }
      let entry;
      try {
        entry = await api.call("replication.create", task);
      } catch (error) {
        await removeSnapshotTasks(created); // nothing is left half-made when the task is refused
        throw error;
      }
      toast(`Replication task ${entry.name} saved.`, "ok");
      try {
        if (created.length) await takeSnapshots(created);
        if (!task.auto) await api.startJob("replication.run", [entry.id]);
      } catch (error) {
        toast(`Saved, but ${created.length ? "the first snapshot or " : ""}the run failed to start: ${error.message}`,
          "error");
      }
      ctx.navigate("/replication");
    } catch (error) {
      const placed = showErrors(form, error);
      const first = placed[0];
      if (first) {
        const section = first.closest("section[data-step]");
        if (section) go(Number(section.dataset.step));
        first.closest(".field, fieldset")?.querySelector("input, select, textarea")?.focus();
        first.scrollIntoView?.({ block: "center" });
      } else {
        formErrors.scrollIntoView?.({ block: "nearest" });
      }
    } finally {
      start.disabled = false;
    }
  });

  sync();
  return null;
}
