// SSH connections and key pairs (keychaincredential.*), and the "new SSH connection" dialog the wizard reuses.

import { ApiError } from "../api.js";
import { button, clearErrors, confirmDialog, errorBlock, field, h, modal, showErrors, toast } from "../ui.js";

/** The SSH_CREDENTIALS entries, or throws ApiError. */
export function listConnections(api) {
  return api.call("keychaincredential.query", [["type", "=", "SSH_CREDENTIALS"]], { order_by: ["name"] });
}

/** Dialog creating a connection through keychaincredential.setup_ssh_connection; resolves with the entry. */
export async function sshConnectionDialog(api) {
  let keyPairs = [];
  try {
    keyPairs = await api.call("keychaincredential.query", [["type", "=", "SSH_KEY_PAIR"]], { order_by: ["name"] });
  } catch (error) {
    toast(`Key pairs could not be listed: ${error.message}`, "error"); // generating a new one still works
  }
  return modal("New SSH connection", (close) => {
    const form = h("form", { testid: "ssh-form", novalidate: true });
    const name = field({ label: "Name", field: "connection_name", attrs: { required: true } });
    let setupType = "SEMI-AUTOMATIC";
    const method = h("fieldset", { class: "segmented" }, h("legend", {}, "Setup method"),
      ...[["SEMI-AUTOMATIC", "Semi-automatic (another TrueNAS-compatible server)"], ["MANUAL", "Manual"]].map(([v, l]) =>
        h("span", {}, h("input", { type: "radio", name: "setup-type", id: `setup-${v}`, value: v, checked: v === setupType,
          testid: `ssh-setup-${v.toLowerCase()}`, onchange: () => { setupType = v; sync(); } }),
        h("label", { for: `setup-${v}` }, l))));

    const semi = {
      url: field({ label: "URL", field: "semi_automatic_setup.url", hint: "For example https://nas.example.com:8600" }),
      verify_ssl: field({ label: "Verify TLS certificate", field: "semi_automatic_setup.verify_ssl", kind: "checkbox", value: true }),
      admin_username: field({ label: "Admin username", field: "semi_automatic_setup.admin_username", value: "root" }),
      password: field({ label: "Admin password", field: "semi_automatic_setup.password", kind: "password",
        attrs: { autocomplete: "off" } }),
      token: field({ label: "Or: one-time authentication token", field: "semi_automatic_setup.token",
        hint: "Generated on the remote system; used instead of the admin password." }),
      username: field({ label: "Remote user for replication", field: "semi_automatic_setup.username", value: "root" }),
      sudo: field({ label: "Use sudo for ZFS commands", field: "semi_automatic_setup.sudo", kind: "checkbox" }),
    };
    const manual = {
      host: field({ label: "Host", field: "manual_setup.host" }),
      port: field({ label: "Port", field: "manual_setup.port", kind: "number", value: 22 }),
      username: field({ label: "Username", field: "manual_setup.username", value: "root" }),
      remote_host_key: field({ label: "Remote host key", field: "manual_setup.remote_host_key", kind: "textarea",
        hint: "Use Discover to read it from the host; check it before trusting it." }),
    };
    const discover = button("Discover remote host key", async () => {
      discover.disabled = true;
      clearErrors(form);
      try {
        manual.remote_host_key.input.value = await api.call("keychaincredential.remote_ssh_host_key_scan",
          { host: manual.host.input.value.trim(), port: Number(manual.port.input.value) || 22 });
      } catch (error) {
        const target = manual.remote_host_key.row.querySelector(".field-error");
        target.hidden = false;
        target.textContent = error.message;
      } finally {
        discover.disabled = false;
      }
    }, { testid: "ssh-discover" });
    const timeout = field({ label: "Connect timeout (seconds)", field: "connect_timeout", kind: "number", value: 10 });

    const keyChoice = field({ label: "Private key", field: "private_key", kind: "select",
      options: [["generate", "Generate a new key pair"], ...keyPairs.map((k) => [String(k.id), k.name])] });
    const keyName = field({ label: "Name of the new key pair", field: "private_key.name" });
    const existingErr = h("p", { class: "field-error", hidden: true, "data-error-for": "private_key.existing_key_id" });

    const semiPart = h("div", {}, Object.values(semi).map((f) => f.row));
    const manualPart = h("div", {}, h("div", { class: "inline" }, manual.host.row, manual.port.row), manual.username.row,
      manual.remote_host_key.row, h("div", { class: "field" }, discover));
    function sync() {
      semiPart.hidden = setupType !== "SEMI-AUTOMATIC";
      manualPart.hidden = setupType !== "MANUAL";
      keyName.row.hidden = keyChoice.input.value !== "generate";
    }
    keyChoice.input.addEventListener("change", sync);
    name.input.addEventListener("input", () => {
      if (!keyName.input.dataset.touched) keyName.input.value = name.input.value ? `${name.input.value} Key` : "";
    });
    keyName.input.addEventListener("input", () => { keyName.input.dataset.touched = "1"; });

    const submit = button("Save", null, { type: "submit", kind: "primary", testid: "ssh-save" });
    form.append(h("div", { class: "form-errors", role: "alert" }), name.row, method, semiPart, manualPart, timeout.row,
      keyChoice.row, keyName.row, existingErr,
      h("div", { class: "actions" }, button("Cancel", () => close(), { testid: "ssh-cancel" }), submit));
    sync();

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const connectTimeout = Number(timeout.input.value) || 10;
      const options = {
        setup_type: setupType,
        connection_name: name.input.value.trim(),
        private_key: keyChoice.input.value === "generate"
          ? { generate_key: true, name: keyName.input.value.trim() }
          : { generate_key: false, existing_key_id: Number(keyChoice.input.value) },
      };
      if (setupType === "MANUAL") {
        options.manual_setup = {
          host: manual.host.input.value.trim(), port: Number(manual.port.input.value) || 22,
          username: manual.username.input.value.trim() || "root",
          remote_host_key: manual.remote_host_key.input.value.trim(), connect_timeout: connectTimeout,
        };
      } else {
        options.semi_automatic_setup = {
          url: semi.url.input.value.trim(), verify_ssl: semi.verify_ssl.input.checked,
          admin_username: semi.admin_username.input.value.trim() || "root",
          password: semi.password.input.value || null, token: semi.token.input.value.trim() || null,
          username: semi.username.input.value.trim() || "root", sudo: semi.sudo.input.checked, connect_timeout: connectTimeout,
        };
      }
      submit.disabled = true;
      try {
        const entry = await api.call("keychaincredential.setup_ssh_connection", options);
        toast(`SSH connection ${entry.name} created.`, "ok");
        if (setupType === "MANUAL") {
          // The remote side does not know our key yet: the administrator installs it there.
          form.replaceWith(await authorizeKeyPanel(api, entry, () => close(entry)));
        } else {
          close(entry);
        }
      } catch (error) {
        showErrors(form, error);
      } finally {
        submit.disabled = false;
      }
    });
    return form;
  }, { testid: "ssh-dialog" });
}

/** After a manual setup: the public key to authorize on the remote host, with a Copy and a Done button. */
async function authorizeKeyPanel(api, connection, done) {
  const attrs = connection.attributes || {};
  let publicKey = "";
  try {
    const [pair] = await api.call("keychaincredential.query", [["id", "=", attrs.private_key]]);
    publicKey = pair?.attributes?.public_key || "";
  } catch (error) {
    publicKey = `(could not read the public key: ${error.message})`;
  }
  const keyId = "ssh-public-key-text";
  const text = h("textarea", { id: keyId, readonly: true, rows: 4, class: "key", testid: "ssh-public-key", value: publicKey });
  const copy = button("Copy", async () => {
    try {
      await navigator.clipboard.writeText(publicKey);
      copy.textContent = "Copied";
    } catch {
      text.select(); // no clipboard access (plain http): select it for Ctrl+C
    }
  }, { kind: "small", testid: "ssh-copy-key" });
  const finish = button("Done", done, { kind: "primary", testid: "ssh-done" });
  const panel = h("div", { testid: "ssh-authorize" },
    h("p", { class: "notice info" }, `Connection ${connection.name} is saved. Before it can be used, add this public key `
      + `to ~${attrs.username || "root"}/.ssh/authorized_keys on ${attrs.host}${attrs.port && attrs.port !== 22 ? ` (port ${attrs.port})` : ""}:`),
    h("label", { for: keyId }, "Public key"), text,
    h("div", { class: "actions" }, copy, finish));
  queueMicrotask(() => finish.focus());
  return panel;
}

export async function render(ctx, page) {
  const { api } = ctx;
  const body = h("div", { testid: "ssh-page" }, h("p", { class: "muted" }, "Loading…"));
  page.append(h("div", { class: "page-head" }, h("h1", {}, "SSH Connections"),
    button("Add SSH connection", async () => { if (await sshConnectionDialog(api)) load(); },
      { kind: "primary", testid: "ssh-add" })), body);

  async function load() {
    let all;
    try {
      all = await api.call("keychaincredential.query", [], { order_by: ["name"] });
    } catch (error) {
      body.replaceChildren(errorBlock(error, "SSH connections"));
      return;
    }
    const keyName = new Map(all.filter((c) => c.type === "SSH_KEY_PAIR").map((c) => [c.id, c.name]));
    const conns = all.filter((c) => c.type === "SSH_CREDENTIALS");
    const pairs = all.filter((c) => c.type === "SSH_KEY_PAIR");
    const attrs = (c) => (c.attributes && typeof c.attributes === "object" ? c.attributes : {});
    body.replaceChildren(
      h("h2", {}, "Connections"),
      conns.length ? h("table", { class: "list", testid: "ssh-table" },
        h("thead", {}, h("tr", {}, ["Name", "Host", "Port", "User", "Key pair", "Actions"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, conns.map((c) => h("tr", { testid: `ssh-row-${c.id}` },
          h("td", { "data-label": "Name" }, c.name), h("td", { "data-label": "Host" }, attrs(c).host || "—"),
          h("td", { "data-label": "Port" }, attrs(c).port ?? "—"), h("td", { "data-label": "User" }, attrs(c).username || "—"),
          h("td", { "data-label": "Key pair" }, keyName.get(attrs(c).private_key) || attrs(c).private_key || "—"),
          h("td", { "data-label": "Actions" }, deleteButton(c))))))
        : h("p", { class: "empty card" }, "No SSH connections yet."),
      h("h2", {}, "SSH key pairs"),
      pairs.length ? h("table", { class: "list", testid: "keypair-table" },
        h("thead", {}, h("tr", {}, ["Name", "Public key", "Actions"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, pairs.map((c) => h("tr", { testid: `keypair-row-${c.id}` },
          h("td", { "data-label": "Name" }, c.name),
          h("td", { "data-label": "Public key" }, h("code", { class: "key", testid: `keypair-public-${c.id}` },
            String(attrs(c).public_key || "—"))),
          h("td", { "data-label": "Actions" }, deleteButton(c))))))
        : h("p", { class: "empty card" }, "No key pairs yet; the connection dialog can generate one."));
  }

  function deleteButton(cred) {
    return button("Delete", async () => {
      if (!(await confirmDialog(`Delete ${cred.name}?`, { confirmLabel: "Delete" }))) return;
      try {
        await api.call("keychaincredential.delete", cred.id, { cascade: false });
      } catch (error) {
        const used = error instanceof ApiError && error.fieldErrors.some((e) => e.attribute === "options.cascade");
        if (!used) {
          toast(error.message, "error");
          return;
        }
        let users = [];
        try {
          users = await api.call("keychaincredential.used_by", cred.id);
        } catch { /* the list is only informative */ }
        const text = `${cred.name} is in use${users.length ? `: ${users.map((u) => `${u.title} (will ${u.unbind_method === "delete" ? "be deleted" : "be disabled"})`).join("; ")}` : ""}. Delete it anyway?`;
        if (!(await confirmDialog(text, { confirmLabel: "Delete and unbind" }))) return;
        try {
          await api.call("keychaincredential.delete", cred.id, { cascade: true });
        } catch (again) {
          toast(again.message, "error");
          return;
        }
      }
      toast(`Deleted ${cred.name}.`, "ok");
      load();
    }, { kind: "small danger", testid: `credential-delete-${cred.id}`, attrs: { "aria-label": `Delete ${cred.name}` } });
  }

  await load();
  return null;
}
