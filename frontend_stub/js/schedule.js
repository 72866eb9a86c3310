// Schedule picker: presets, custom cron (+ time window) or run once. The words describing a schedule always
// come from the server (`core.describe_schedule`); the page computes no cron meaning itself.

import { field, h, uniqueId } from "./ui.js";

const ALL = { minute: "0", hour: "*", dom: "*", month: "*", dow: "*" };
export const PRESETS = {
  hourly: { label: "Hourly", cron: { ...ALL } },
  daily: { label: "Daily", cron: { ...ALL, hour: "0" } },
  weekly: { label: "Weekly", cron: { ...ALL, hour: "0", dow: "sun" } },
  monthly: { label: "Monthly", cron: { ...ALL, hour: "0", dom: "1" } },
};
const CRON_FIELDS = [["minute", "Minute"], ["hour", "Hour"], ["dom", "Day of month"], ["month", "Month"],
  ["dow", "Day of week"]];

function samePreset(schedule) {
  for (const [key, preset] of Object.entries(PRESETS)) {
    if (CRON_FIELDS.every(([f]) => String(schedule[f] ?? ALL[f]).replace(/^0+(?=\d)/, "") === preset.cron[f])
      && (!schedule.begin || schedule.begin === "00:00") && (!schedule.end || schedule.end === "23:59")) {
      return key;
    }
  }
  return null;
}

/**
 * options: {api, name: field name for errors ("schedule"), value: schedule object or null,
 *           runOnce: offer "Run once" (value null selects it), window: show begin/end, label}
 * Returns {element, get(): {mode, schedule}, set(schedule|null), onChange(fn)}.
 */
export function scheduleEditor({ api, name = "schedule", value = null, runOnce = false, window: withWindow = false,
  label = "Schedule", testid = "schedule" }) {
  const listeners = [];
  const modes = [...Object.entries(PRESETS).map(([k, p]) => [k, p.label]), ["custom", "Custom…"]];
  if (runOnce) modes.push(["once", "Run once"]);
  const select = field({ label, field: name, kind: "select", options: modes, testid: `${testid}-preset` });
  const cronInputs = {};
  const custom = h("div", { class: "custom-cron", testid: `${testid}-custom` });
  const cronRow = h("div", { class: "grid-3" });
  for (const [key, text] of CRON_FIELDS) {
    const f = field({ label: text, field: `${name}.${key}`, value: ALL[key], testid: `${testid}-${key}` });
    cronInputs[key] = f.input;
    cronRow.append(f.row);
  }
  custom.append(cronRow, h("p", { class: "hint" }, "Cron fields; day of week 1 = Monday … 7 = Sunday, or mon…sun."));
  if (withWindow) {
    const begin = field({ label: "Begin (HH:MM)", field: `${name}.begin`, value: "00:00", testid: `${testid}-begin` });
    const end = field({ label: "End (HH:MM)", field: `${name}.end`, value: "23:59", testid: `${testid}-end` });
    cronInputs.begin = begin.input;
    cronInputs.end = end.input;
    custom.append(h("div", { class: "grid-2" }, begin.row, end.row),
      h("p", { class: "hint" }, "Runs only between Begin and End."));
  }
  const descId = uniqueId("schedule-desc");
  const description = h("p", { class: "hint", id: descId, testid: `${testid}-description`, "aria-live": "polite" });
  select.input.setAttribute("aria-describedby", `${select.input.getAttribute("aria-describedby")} ${descId}`);
  const element = h("div", { class: "schedule-editor", testid }, select.row, custom, description);

  function current() {
    const mode = select.input.value;
    if (mode === "once") return { mode, schedule: null };
    if (mode === "custom") {
      const schedule = {};
      for (const [key, input] of Object.entries(cronInputs)) schedule[key] = input.value.trim();
      return { mode, schedule };
    }
    const schedule = { ...PRESETS[mode].cron };
    if (withWindow) Object.assign(schedule, { begin: "00:00", end: "23:59" });
    return { mode, schedule };
  }

  let timer = null;
  let serial = 0;
  function changed() {
    custom.hidden = select.input.value !== "custom";
    listeners.forEach((fn) => fn(current()));
    clearTimeout(timer);
    timer = setTimeout(describe, 250);
  }

  async function describe() {
    const { mode, schedule } = current();
    const mine = ++serial;
    if (mode === "once") {
      description.textContent = "Runs once, right after the task is saved; later runs are started by hand.";
      return;
    }
    if (!api) {
      description.textContent = "";
      return;
    }
    try {
      const text = await api.call("core.describe_schedule", schedule);
      if (mine === serial) description.textContent = text;
    } catch (error) {
      if (mine === serial) description.textContent = error.message;
    }
  }

  function set(schedule) {
    if (!schedule) {
      select.input.value = runOnce ? "once" : "daily";
    } else {
      const preset = samePreset(schedule);
      select.input.value = preset || "custom";
      for (const [key, input] of Object.entries(cronInputs)) {
        input.value = schedule[key] ?? (key === "begin" ? "00:00" : key === "end" ? "23:59" : ALL[key]);
      }
    }
    changed();
  }

  select.input.addEventListener("change", changed);
  for (const input of Object.values(cronInputs)) input.addEventListener("input", changed);
  set(value);
  return { element, get: current, set, onChange: (fn) => listeners.push(fn) };
}
