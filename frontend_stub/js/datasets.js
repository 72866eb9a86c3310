// Expandable dataset browser over `pool.dataset.query` (local, with types) or `replication.list_datasets`.

import { ApiError } from "./api.js";
import { button, errorBlock, h, uniqueId } from "./ui.js";

const ENOENT = 2;

function flatten(items, out = []) {
  for (const item of items || []) {
    out.push({ name: item.name || item.id, type: (item.type || "FILESYSTEM").toUpperCase() });
    if (Array.isArray(item.children)) flatten(item.children, out);
  }
  return out;
}

/** [{name, type}] for one side. Type is only known locally ("FILESYSTEM" | "VOLUME"); remote entries get null. */
export async function loadDatasets(api, transport, sshCredentials) {
  if (transport === "LOCAL") {
    const query = () => api.call("pool.dataset.query", [], { select: ["name", "type"], order_by: ["name"] });
    try {
      return flatten(await query());
    } catch (error) {
      // A pool exported between the server's pool and dataset listings fails the whole query (ENOENT): the
      // second try no longer sees that pool.
      if (!(error instanceof ApiError && error.errno === ENOENT)) throw error;
      return flatten(await query());
    }
  }
  const names = await api.call("replication.list_datasets", transport, sshCredentials);
  return names.map((name) => ({ name, type: null }));
}

/**
 * A "Browse" button with an expandable tree.
 * options: {api, side(): {transport, sshCredentials} | null (null: choose a connection first),
 *   multiple, selected(): string[], onPick(name, checked), refuseVolumes, testid}
 */
export function datasetBrowser({ api, side, multiple = false, selected = () => [], onPick, refuseVolumes = false,
  testid = "datasets" }) {
  const panel = h("div", { class: "browser", testid: `${testid}-tree`, hidden: true });
  const toggle = button("Browse datasets", null, { kind: "small", testid: `${testid}-browse`,
    attrs: { "aria-expanded": "false" } });
  const groupName = uniqueId("pick");

  toggle.addEventListener("click", async () => {
    const open = panel.hidden;
    panel.hidden = !open;
    toggle.setAttribute("aria-expanded", String(open));
    if (open) await load();
  });

  async function load() {
    const where = side();
    if (!where) {
      panel.replaceChildren(h("p", { class: "hint" }, "Choose an SSH connection first."));
      return;
    }
    panel.replaceChildren(h("p", { class: "muted" }, "Loading datasets…"));
    try {
      const list = await loadDatasets(api, where.transport, where.sshCredentials);
      panel.replaceChildren(tree(list));
    } catch (error) {
      panel.replaceChildren(errorBlock(error, "Dataset list"));
    }
  }

  function tree(list) {
    if (!list.length) return h("p", { class: "muted" }, "No datasets found.");
    const byName = new Map(list.map((d) => [d.name, d]));
    const children = new Map();
    const roots = [];
    for (const d of [...list].sort((a, b) => a.name.localeCompare(b.name))) {
      const parent = d.name.includes("/") ? d.name.slice(0, d.name.lastIndexOf("/")) : null;
      if (parent && byName.has(parent)) {
        if (!children.has(parent)) children.set(parent, []);
        children.get(parent).push(d);
      } else {
        roots.push(d);
      }
    }
    const chosen = new Set(selected());
    const node = (d) => {
      const id = uniqueId("ds");
      const volume = d.type === "VOLUME";
      const input = h("input", { type: multiple ? "checkbox" : "radio", name: groupName, id, value: d.name,
        checked: chosen.has(d.name), disabled: refuseVolumes && volume, testid: `${testid}-pick-${d.name}`,
        onchange: (e) => onPick(d.name, e.target.checked) });
      const label = h("span", { class: "node" }, input, h("label", { for: id }, d.name.split("/").pop()),
        volume ? h("span", { class: "kind" }, refuseVolumes ? "zvol (not allowed here)" : "zvol") : null);
      const kids = children.get(d.name) || [];
      if (!kids.length) return h("li", { class: "leaf" }, label);
      return h("li", {}, h("details", { open: !d.name.includes("/") },
        h("summary", { "aria-label": `${d.name}: show children` }, label),
        h("ul", { class: "tree" }, kids.map(node))));
    };
    return h("ul", { class: "tree root", "aria-label": "Datasets" }, roots.map(node));
  }

  return { element: h("div", { class: "dataset-browser" }, toggle, panel), reload: () => (!panel.hidden ? load() : null) };
}
