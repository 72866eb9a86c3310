// The advanced replication form: every replication field (truenas-api.md §2.1.1). Used to create a task
// (optionally carrying over the wizard's choices) and to edit a saved one.

import { scheduleEditor } from "../schedule.js";
import { button, errorBlock, field, h, showErrors, splitList, toast } from "../ui.js";
import { showPlan } from "../widgets.js";

const opt = (values, none = null) => [...(none !== null ? [["", none]] : []), ...values.map((v) => [v, v])];

// [field, kind, label, extra]; kinds: text, int, bool, select, list, dict, json, tri, creds, snaptasks, schedule
const SECTIONS = [
  ["General", [
    ["name", "text", "Name"],
    ["direction", "select", "Direction", { options: opt(["PUSH", "PULL"]) }],
    ["transport", "select", "Transport", { options: opt(["SSH", "SSH+NETCAT", "LOCAL"]) }],
    ["ssh_credentials", "creds", "SSH connection"],
    ["sudo", "bool", "Use sudo for ZFS commands on the remote side"],
    ["enabled", "bool", "Enabled"],
    ["logging_level", "select", "Logging level", { options: opt(["DEBUG", "INFO", "WARNING", "ERROR"], "Default") }],
  ]],
  ["SSH+NETCAT", [
    ["netcat_active_side", "select", "Active side", { options: opt(["LOCAL", "REMOTE"], "—") }],
    ["netcat_active_side_listen_address", "text", "Active side listen address", { nullable: true }],
    ["netcat_active_side_port_min", "int", "Active side port: minimum", { nullable: true }],
    ["netcat_active_side_port_max", "int", "Active side port: maximum", { nullable: true }],
    ["netcat_passive_side_connect_address", "text", "Passive side connect address", { nullable: true }],
  ]],
  ["Source", [
    ["source_datasets", "list", "Source datasets (one per line)"],
    ["recursive", "bool", "Recursive"],
    ["exclude", "list", "Exclude child datasets (one per line)"],
    ["properties", "bool", "Include dataset properties"],
    ["properties_exclude", "list", "Properties to exclude (one per line)"],
    ["properties_override", "dict", "Properties to override (name=value per line)"],
    ["replicate", "bool", "Full filesystem replication"],
    ["periodic_snapshot_tasks", "snaptasks", "Periodic snapshot tasks (push)"],
    ["naming_schema", "list", "Naming schema (pull; one per line)"],
    ["also_include_naming_schema", "list", "Also include naming schema (push; one per line)"],
    ["name_regex", "text", "Name regex (instead of naming schemas)", { nullable: true }],
    ["hold_pending_snapshots", "bool", "Hold pending snapshots (push)"],
  ]],
  ["Destination", [
    ["target_dataset", "text", "Destination dataset"],
    ["readonly", "select", "Destination read-only policy", { options: [["SET", "SET: make it read-only after each run"],
      ["REQUIRE", "REQUIRE: existing targets must be read-only"], ["IGNORE", "IGNORE"]] }],
    ["encryption", "bool", "Encryption"],
    ["encryption_inherit", "tri", "Inherit encryption from the parent"],
    ["encryption_key_format", "select", "Encryption key format", { options: opt(["HEX", "PASSPHRASE"], "—") }],
    ["encryption_key", "text", "Encryption key", { nullable: true, secret: true }],
    ["encryption_key_location", "text", "Encryption key location ($TrueNAS = store in database)", { nullable: true }],
    ["allow_from_scratch", "bool", "Replicate from scratch if incremental is not possible"],
  ]],
  ["Schedule", [
    ["auto", "bool", "Run automatically"],
    ["schedule", "schedule", "Schedule", { toggle: "Run on a schedule" }],
    ["restrict_schedule", "schedule", "Restricted schedule", { toggle: "Restrict runs triggered by snapshot tasks to a schedule" }],
    ["only_matching_schedule", "bool", "Only replicate snapshots matching the schedule"],
  ]],
  ["Destination snapshot retention", [
    ["retention_policy", "select", "Retention policy", { options: [["SOURCE", "Same as source"], ["CUSTOM", "Custom"], ["NONE", "None"]] }],
    ["lifetime_value", "int", "Lifetime", { nullable: true }],
    ["lifetime_unit", "select", "Lifetime unit", { options: opt(["HOUR", "DAY", "WEEK", "MONTH", "YEAR"], "—") }],
    ["lifetimes", "json", "Extra lifetimes (JSON list of {schedule, lifetime_value, lifetime_unit})"],
  ]],
  ["Transfer", [
    ["compression", "select", "Stream compression (SSH)", { options: opt(["LZ4", "PIGZ", "PLZIP"], "Disabled") }],
    ["speed_limit", "int", "Speed limit (bytes/s, SSH)", { nullable: true }],
    ["large_block", "bool", "Allow blocks larger than 128 KiB"],
    ["embed", "bool", "Allow WRITE_EMBEDDED records"],
    ["compressed", "bool", "Allow compressed WRITE records"],
    ["retries", "int", "Number of retries for failed replications"],
  ]],
];

const NETCAT_FIELDS = ["netcat_active_side_listen_address", "netcat_active_side_port_min", "netcat_active_side_port_max",
  "netcat_passive_side_connect_address"];

export const DEFAULTS = {
  name: "", direction: "PUSH", transport: "SSH", ssh_credentials: null, sudo: false, enabled: true, logging_level: null,
  netcat_active_side: null, netcat_active_side_listen_address: null, netcat_active_side_port_min: null,
  netcat_active_side_port_max: null, netcat_passive_side_connect_address: null,
  source_datasets: [], recursive: false, exclude: [], properties: true, properties_exclude: [], properties_override: {},
  replicate: false, periodic_snapshot_tasks: [], naming_schema: [], also_include_naming_schema: [], name_regex: null,
  hold_pending_snapshots: false, target_dataset: "", readonly: "SET", encryption: false, encryption_inherit: null,
  encryption_key_format: null, encryption_key: null, encryption_key_location: null, allow_from_scratch: false,
  auto: true, schedule: null, restrict_schedule: null, only_matching_schedule: false, retention_policy: "SOURCE",
  lifetime_value: null, lifetime_unit: null, lifetimes: [], compression: null, speed_limit: null, large_block: true,
  embed: false, compressed: true, retries: 5,
};
const READ_ONLY = ["id", "state", "job", "has_encrypted_dataset_keys", "schedule_description"];
const REDACTED = "********";

/** A query entry turned into the create/update shape (credential object → id, snapshot tasks → ids). */
export function entryToDefinition(entry) {
  const out = { ...entry };
  for (const key of READ_ONLY) delete out[key];
  if (out.ssh_credentials && typeof out.ssh_credentials === "object") out.ssh_credentials = out.ssh_credentials.id;
  out.periodic_snapshot_tasks = (out.periodic_snapshot_tasks || []).map((t) => (typeof t === "object" ? t.id : t));
  return out;
}

export async function render(ctx, page, [idText] = []) {
  const { api } = ctx;
  const id = idText ? Number(idText) : null;
  page.append(h("div", { class: "page-head" }, h("h1", {}, id ? "Edit Replication Task" : "Advanced Replication Creation"),
    button("Back to the list", () => ctx.navigate("/replication"), { testid: "form-back" })));

  let values = { ...DEFAULTS };
  if (id) {
    try {
      values = { ...DEFAULTS, ...entryToDefinition(await api.call("replication.get_instance", id)) };
    } catch (error) {
      page.append(errorBlock(error, "Replication task"));
      return null;
    }
  } else if (ctx.drafts.has("replication")) {
    values = { ...DEFAULTS, ...ctx.drafts.get("replication") };
    ctx.drafts.delete("replication");
    page.append(h("p", { class: "notice info", testid: "form-from-wizard" }, "The wizard's choices are filled in below."));
  }

  let connections = [];
  let snapshotTasks = null;
  try {
    connections = await api.call("keychaincredential.query", [["type", "=", "SSH_CREDENTIALS"]]);
  } catch (error) {
    toast(`SSH connections could not be listed: ${error.message}`, "error");
  }
  try {
    snapshotTasks = await api.call("pool.snapshottask.query");
  } catch {
    snapshotTasks = null; // typed ids instead
  }

  const form = h("form", { class: "advanced", testid: "replication-form", novalidate: true });
  form.append(h("div", { class: "form-errors", role: "alert", testid: "form-errors" }));
  const readers = {};
  const controls = {};
  const sectionBoxes = {};

  for (const [title, fields] of SECTIONS) {
    const box = h("fieldset", { testid: `form-section-${title.toLowerCase().replace(/[^a-z]+/g, "-")}` }, h("legend", {}, title));
    const grid = h("div", { class: "grid-2" });
    box.append(grid);
    for (const [name, kind, label, extra = {}] of fields) {
      const value = values[name];
      let control;
      if (kind === "schedule") {
        const on = field({ label: extra.toggle, field: `${name}_enabled`, kind: "checkbox", value: value != null, testid: `form-${name}-enabled` });
        const editor = scheduleEditor({ api, name, value, window: true, label, testid: `form-${name}` });
        editor.element.hidden = value == null;
        on.input.addEventListener("change", () => { editor.element.hidden = !on.input.checked; });
        grid.append(h("div", { class: "span-2" }, on.row, editor.element));
        readers[name] = () => (on.input.checked ? editor.get().schedule : null);
        continue;
      }
      if (kind === "bool") {
        control = field({ label, field: name, kind: "checkbox", value, testid: `form-${name}` });
        readers[name] = () => control.input.checked;
      } else if (kind === "select") {
        control = field({ label, field: name, kind: "select", options: extra.options, value: value ?? "", testid: `form-${name}` });
        readers[name] = () => control.input.value || null;
      } else if (kind === "tri") {
        control = field({ label, field: name, kind: "select", value: value === null || value === undefined ? "" : String(value),
          options: [["", "Not set"], ["true", "Yes"], ["false", "No"]], testid: `form-${name}` });
        readers[name] = () => (control.input.value === "" ? null : control.input.value === "true");
      } else if (kind === "creds") {
        control = field({ label, field: name, kind: "select", value: value ?? "", testid: `form-${name}`,
          options: [["", "None (local)"], ...connections.map((c) => [String(c.id), c.name]),
            ...(value != null && !connections.some((c) => c.id === value) ? [[String(value), `Credential ${value}`]] : [])] });
        readers[name] = () => (control.input.value ? Number(control.input.value) : null);
      } else if (kind === "snaptasks") {
        if (snapshotTasks) {
          control = field({ label, field: name, kind: "select", testid: `form-${name}`, attrs: { multiple: true, size: 4 },
            hint: snapshotTasks.length ? "Ctrl+click chooses several." : "There are no periodic snapshot tasks yet.",
            options: snapshotTasks.map((t) => [String(t.id), `${t.dataset} (${t.naming_schema})${t.enabled ? "" : " — disabled"}`]) });
          for (const o of control.input.options) o.selected = (value || []).includes(Number(o.value));
          readers[name] = () => [...control.input.selectedOptions].map((o) => Number(o.value));
        } else {
          control = field({ label: `${label}: ids`, field: name, value: (value || []).join(", "), testid: `form-${name}` });
          readers[name] = () => splitList(control.input.value).map(Number);
        }
      } else if (kind === "list") {
        control = field({ label, field: name, kind: "textarea", value: (value || []).join("\n"), testid: `form-${name}` });
        readers[name] = () => splitList(control.input.value.replace(/,/g, "\n"));
      } else if (kind === "dict") {
        control = field({ label, field: name, kind: "textarea", testid: `form-${name}`,
          value: Object.entries(value || {}).map(([k, v]) => `${k}=${v}`).join("\n") });
        readers[name] = () => Object.fromEntries(control.input.value.split("\n").map((l) => l.trim()).filter(Boolean)
          .map((l) => [l.slice(0, l.indexOf("=") < 0 ? l.length : l.indexOf("=")).trim(), l.includes("=") ? l.slice(l.indexOf("=") + 1).trim() : ""]));
      } else if (kind === "json") {
        control = field({ label, field: name, kind: "textarea", value: JSON.stringify(value || []), testid: `form-${name}` });
        readers[name] = () => {
          try {
            return JSON.parse(control.input.value || "[]");
          } catch {
            throw new Error(`${label}: not valid JSON`);
          }
        };
      } else if (kind === "int") {
        control = field({ label, field: name, kind: "number", value: value ?? "", testid: `form-${name}` });
        readers[name] = () => (control.input.value === "" ? (extra.nullable ? null : undefined) : Number(control.input.value));
      } else {
        control = field({ label, field: name, kind: extra.secret ? "password" : "text", value: value ?? "", testid: `form-${name}`,
          attrs: extra.secret ? { autocomplete: "new-password" } : {} });
        readers[name] = () => (control.input.value === "" && extra.nullable ? null : control.input.value);
      }
      controls[name] = control;
      grid.append(control.row);
    }
    sectionBoxes[title] = box;
    form.append(box);
  }

  // Fields that only mean something with another field's value are hidden (and sent empty) otherwise.
  const transport = () => controls.transport.input.value;
  const DEPENDENT = [
    [() => transport() === "SSH+NETCAT", ["netcat_active_side", ...NETCAT_FIELDS]],
    [() => transport() !== "LOCAL", ["ssh_credentials", "sudo"]],
    [() => transport() === "SSH", ["compression", "speed_limit"]],
    [() => controls.retention_policy.input.value === "CUSTOM", ["lifetime_value", "lifetime_unit", "lifetimes"]],
    [() => controls.encryption.input.checked,
      ["encryption_inherit", "encryption_key_format", "encryption_key", "encryption_key_location"]],
  ];
  const EMPTY = { sudo: false, lifetimes: [] };

  function syncDependent() {
    for (const [shown, names] of DEPENDENT) {
      for (const n of names) controls[n].row.hidden = !shown();
    }
    sectionBoxes["SSH+NETCAT"].hidden = transport() !== "SSH+NETCAT";
  }
  controls.transport.input.addEventListener("change", () => {
    // SSH+NETCAT needs an active side; this system listening is the usual choice.
    if (transport() === "SSH+NETCAT" && !controls.netcat_active_side.input.value) {
      controls.netcat_active_side.input.value = "LOCAL";
    }
    syncDependent();
  });
  for (const n of ["retention_policy", "encryption"]) controls[n].input.addEventListener("change", syncDependent);
  syncDependent();

  function definition() {
    const data = {};
    for (const [name, read] of Object.entries(readers)) {
      const value = read();
      if (value !== undefined) data[name] = value;
    }
    for (const [shown, names] of DEPENDENT) {
      if (!shown()) for (const n of names) data[n] = n in EMPTY ? EMPTY[n] : null;
    }
    if (data.encryption_key === REDACTED) delete data.encryption_key; // unchanged secret
    return data;
  }

  const save = button(id ? "Save" : "Create", null, { type: "submit", kind: "primary", testid: "form-save" });
  form.append(h("div", { class: "actions" },
    button("Cancel", () => ctx.navigate("/replication"), { testid: "form-cancel" }),
    button("Plan preview", () => {
      try {
        showPlan(api, definition());
      } catch (error) {
        toast(error.message, "error");
      }
    }, { testid: "form-plan" }),
    save));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    save.disabled = true;
    try {
      const data = definition();
      const saved = id ? await api.call("replication.update", id, data) : await api.call("replication.create", data);
      toast(`Replication task ${saved.name} saved.`, "ok");
      ctx.navigate("/replication");
    } catch (error) {
      const placed = showErrors(form, error);
      const control = placed[0]?.closest(".field")?.querySelector("input, select, textarea");
      if (control) control.focus();
      else form.querySelector(".form-errors").scrollIntoView?.({ block: "nearest" });
    } finally {
      save.disabled = false;
    }
  });
  page.append(form);
  return null;
}
