// Login: username + password, or an API key (optionally with its username).

import { button, field, h } from "../ui.js";

export function render(ctx, page) {
  let mode = "password";
  const username = field({ label: "Username", field: "username", attrs: { autocomplete: "username", required: true } });
  const password = field({ label: "Password", field: "password", kind: "password", attrs: { autocomplete: "current-password" } });
  const apiKey = field({ label: "API key", field: "api_key", kind: "password", attrs: { autocomplete: "off" },
    hint: "The key as shown when it was created, for example 1-AbCd…" });
  const keyUser = field({ label: "Username (optional)", field: "api_key_username", attrs: { autocomplete: "username" } });
  const message = h("p", { class: "error", role: "alert", testid: "login-error", hidden: true });
  const submit = button("Log in", null, { type: "submit", kind: "primary", testid: "login-submit" });

  const passwordPart = h("div", {}, username.row, password.row);
  const keyPart = h("div", { hidden: true }, apiKey.row, keyUser.row);

  const modeSwitch = h("fieldset", { class: "segmented" },
    h("legend", {}, "How to log in"),
    ...[["password", "With a password"], ["api_key", "With an API key"]].map(([value, label]) => {
      const id = `login-mode-${value}`;
      return h("span", {},
        h("input", { type: "radio", name: "login-mode", id, value, checked: value === mode, testid: `login-mode-${value}`,
          onchange: () => {
            mode = value;
            passwordPart.hidden = mode !== "password";
            keyPart.hidden = mode !== "api_key";
          } }),
        h("label", { for: id }, label));
    }));

  const form = h("form", { class: "card login", testid: "login-form", novalidate: true },
    h("h1", {}, "Log in"), modeSwitch, passwordPart, keyPart, message, h("div", { class: "actions" }, submit));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    message.hidden = true;
    submit.disabled = true;
    try {
      const ok = mode === "password"
        ? await ctx.api.loginWithPassword(username.input.value.trim(), password.input.value)
        : await ctx.api.loginWithApiKey(apiKey.input.value.trim(), keyUser.input.value.trim());
      if (ok) {
        await ctx.onLoggedIn();
        return;
      }
      message.textContent = mode === "password" ? "Wrong username or password." : "The API key was not accepted.";
    } catch (error) {
      message.textContent = error.message || String(error);
    } finally {
      submit.disabled = false;
    }
    message.hidden = false;
    (mode === "password" ? password.input : apiKey.input).focus();
  });

  page.append(h("div", { class: "login-wrap" }, form));
  username.input.focus();
}
