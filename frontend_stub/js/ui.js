// DOM helpers shared by the pages: element building, form fields, dialogs, messages and formatting.

import { ApiError } from "./api.js";

/** Build an element. attrs: properties/attributes; `on*` functions become listeners; children may be nested. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "testid") el.setAttribute("data-testid", value);
    else if (key === "style" && typeof value === "object") Object.assign(el.style, value);
    else if (["value", "checked", "disabled", "selected", "hidden", "open", "required"].includes(key)) el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

let uid = 0;
export function uniqueId(prefix = "f") {
  uid += 1;
  return `${prefix}-${uid}`;
}

/**
 * A labelled form control. `field` names the API attribute (used to place validation errors).
 * kind: text | password | number | textarea | select | checkbox. Returns {row, input}.
 */
export function field({ label, field: name, kind = "text", value = "", options = [], hint = "", testid, attrs = {} }) {
  const id = uniqueId(name || "field");
  const hintId = hint ? `${id}-hint` : null;
  const errorId = `${id}-error`;
  const describedBy = [hintId, errorId].filter(Boolean).join(" ");
  const common = { id, name, testid: testid || (name ? `field-${name}` : undefined), "aria-describedby": describedBy, ...attrs };
  let input;
  if (kind === "select") {
    input = h("select", common, options.map((o) => {
      const [optValue, optLabel] = Array.isArray(o) ? o : [o, o];
      return h("option", { value: optValue, selected: String(optValue) === String(value ?? "") }, optLabel);
    }));
  } else if (kind === "textarea") {
    input = h("textarea", { ...common, rows: attrs.rows || 3 });
    input.value = value ?? "";
  } else if (kind === "checkbox") {
    input = h("input", { ...common, type: "checkbox", checked: Boolean(value) });
  } else {
    input = h("input", { ...common, type: kind, value: value ?? "" });
  }
  const error = h("p", { class: "field-error", id: errorId, role: "alert", hidden: true, "data-error-for": name || "" });
  const row = kind === "checkbox"
    ? h("div", { class: "field field-check", "data-field": name || "" }, input, h("label", { for: id }, label),
      hint ? h("p", { class: "hint", id: hintId }, hint) : null, error)
    : h("div", { class: "field", "data-field": name || "" }, h("label", { for: id }, label), input,
      hint ? h("p", { class: "hint", id: hintId }, hint) : null, error);
  return { row, input };
}

export function button(label, onclick, { testid, kind = "", type = "button", attrs = {} } = {}) {
  return h("button", { type, class: `btn ${kind}`.trim(), testid, onclick, ...attrs }, label);
}

/** Clear validation messages inside `root`. */
export function clearErrors(root) {
  for (const el of root.querySelectorAll(".field-error")) {
    el.hidden = true;
    el.textContent = "";
  }
  for (const el of root.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  for (const el of root.querySelectorAll(".form-errors")) el.replaceChildren();
}

/**
 * Show an error from the server inside `root`. Validation triples are placed next to the control whose
 * `data-field` matches the attribute path without its argument prefix (`replication_create.source_datasets.0`
 * → `source_datasets.0`, then `source_datasets`); anything unplaced goes to the `.form-errors` box.
 * Returns the attribute paths that were placed (so callers can jump to the right step).
 */
export function showErrors(root, error) {
  clearErrors(root);
  const box = root.querySelector(".form-errors");
  const unplaced = [];
  const placed = [];
  const triples = error instanceof ApiError && error.fieldErrors.length
    ? error.fieldErrors
    : [{ attribute: null, message: error.message || String(error) }];
  for (const { attribute, message } of triples) {
    const target = attribute ? findFieldError(root, attribute) : null;
    if (target) {
      target.hidden = false;
      target.textContent = target.textContent ? `${target.textContent} ${message}` : message;
      const control = target.closest(".field")?.querySelector("input, select, textarea");
      if (control) control.setAttribute("aria-invalid", "true");
      placed.push(target);
    } else {
      unplaced.push(attribute ? `${attribute}: ${message}` : message);
    }
  }
  if (box) {
    box.replaceChildren(...unplaced.map((text) => h("p", { class: "error" }, text)));
  } else if (unplaced.length) {
    toast(unplaced.join("\n"), "error");
  }
  return placed;
}

function findFieldError(root, attribute) {
  const parts = String(attribute).split(".");
  const path = parts.length > 1 ? parts.slice(1) : parts;
  // Union member names (e.g. KeychainCredentialCreateSSHCredentialsEntry) are not fields: drop CamelCase parts.
  const cleaned = path.filter((p) => !/^[A-Z][A-Za-z0-9]+$/.test(p));
  for (let n = cleaned.length; n > 0; n -= 1) {
    const name = cleaned.slice(0, n).join(".");
    const all = [...root.querySelectorAll(`.field-error[data-error-for="${CSS.escape(name)}"]`)];
    // Prefer a control the user can see (steps hidden as a whole still count: the caller shows that step).
    const visible = all.find((el) => !el.parentElement.closest("[hidden]:not(section[data-step])"));
    if (visible || all[0]) return visible || all[0];
  }
  return null;
}

// Messages -----------------------------------------------------------------------------------------------

export function toast(text, kind = "info") {
  const region = document.getElementById("toasts");
  if (!region) return;
  const item = h("div", { class: `toast ${kind}`, testid: "toast" }, text);
  region.append(item);
  setTimeout(() => item.remove(), kind === "error" ? 10000 : 5000);
}

/** An error that replaces a page's (or a panel's) content. */
export function errorBlock(error, what) {
  return h("div", { class: "notice error", role: "alert", testid: "page-error" },
    h("strong", {}, `${what}: `), error.message || String(error));
}

// Dialogs ------------------------------------------------------------------------------------------------

/** A modal <dialog>; resolves with whatever `close(value)` is called with (undefined on Escape). */
export function modal(title, build, { testid = "dialog", wide = false } = {}) {
  return new Promise((resolve) => {
    const titleId = uniqueId("dlg");
    const dialog = h("dialog", { class: wide ? "wide" : "", "aria-labelledby": titleId, testid });
    let result;
    const close = (value) => {
      result = value;
      dialog.close();
    };
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(result);
    });
    const body = build(close);
    dialog.append(h("h2", { id: titleId }, title), body);
    document.body.append(dialog);
    dialog.showModal();
    const first = dialog.querySelector("[autofocus], input, select, textarea, button");
    if (first) first.focus();
  });
}

export function confirmDialog(message, { title = "Please confirm", confirmLabel = "Confirm", danger = true } = {}) {
  return modal(title, (close) => h("div", {},
    h("p", {}, message),
    h("div", { class: "actions" },
      button("Cancel", () => close(false), { testid: "confirm-cancel" }),
      button(confirmLabel, () => close(true), { testid: "confirm-ok", kind: danger ? "danger" : "primary" }),
    ),
  ), { testid: "confirm-dialog" }).then(Boolean);
}

// Formatting ---------------------------------------------------------------------------------------------

export function formatBytes(n) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let value = Number(n);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

export function formatDate(value) {
  if (!value) return "—";
  const date = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return date.toLocaleString(undefined, { dateStyle: "short", timeStyle: "short" });
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(Number(seconds))) return "—";
  let s = Math.max(0, Math.round(Number(seconds)));
  const hours = Math.floor(s / 3600);
  s -= hours * 3600;
  const minutes = Math.floor(s / 60);
  s -= minutes * 60;
  if (hours) return `${hours} h ${minutes} min`;
  if (minutes) return `${minutes} min ${s} s`;
  return `${s} s`;
}

/** Text with line-break opportunities after "/", "@" and "_" (long dataset and snapshot names in tables). */
export function breakable(text) {
  const parts = String(text ?? "").split(/(?<=[/@_])/);
  return h("span", {}, parts.flatMap((part, i) => (i ? [h("wbr"), part] : [part])));
}

/** Split a textarea/comma list into trimmed non-empty strings. */
export function splitList(text) {
  return String(text || "").split(/[\n,]/).map((s) => s.trim()).filter(Boolean);
}
