// Widgets used by several pages: job progress, job logs, the replication plan view.

import { ApiError } from "./api.js";
import { button, errorBlock, formatBytes, formatDate, formatDuration, h, modal, toast } from "./ui.js";

/** A live progress block for a job; call `update(job)` with each job object. */
export function jobProgress(testid = "job-progress") {
  const bar = h("progress", { max: 100, value: 0, "aria-label": "Progress", testid: `${testid}-bar` });
  const description = h("div", { class: "description", testid: `${testid}-description` });
  const bytes = h("span", { testid: `${testid}-bytes` });
  const rate = h("span", { testid: `${testid}-rate` });
  const eta = h("span", { testid: `${testid}-eta` });
  const element = h("div", { class: "progress", testid, role: "status", "aria-live": "polite" },
    description, bar, h("div", { class: "meta" }, bytes, rate, eta));
  function update(job) {
    const progress = job.progress || {};
    const finished = job.state === "SUCCESS";
    const percent = finished ? 100 : progress.percent;
    if (typeof percent === "number") bar.value = percent;
    else bar.removeAttribute("value");
    bar.setAttribute("aria-valuetext", typeof percent === "number" ? `${percent}%` : "working");
    element.dataset.state = job.state || "";
    const text = progress.description || (job.state === "WAITING" ? "Waiting to start…" : "");
    description.textContent = finished ? "Finished"
      : job.state === "FAILED" || job.state === "ABORTED" ? `${job.state === "FAILED" ? "Failed" : "Aborted"}: ${job.error || text}`
        : `${typeof percent === "number" ? `${percent}% · ` : ""}${text || "Starting…"}`;
    const extra = progress.extra && typeof progress.extra === "object" ? progress.extra : {};
    bytes.textContent = extra.bytes_sent != null
      ? `${formatBytes(extra.bytes_sent)}${extra.bytes_total ? ` of ${extra.bytes_total_exact === false ? "about " : ""}${formatBytes(extra.bytes_total)}` : ""}`
      : "";
    const active = job.state === "RUNNING" || job.state === "WAITING";
    rate.textContent = active && extra.rate != null ? `${formatBytes(extra.rate)}/s` : "";
    eta.textContent = active && extra.eta != null ? `ETA ${formatDuration(extra.eta)}` : "";
  }
  return { element, update };
}

/** The job's whole log as text (null when it has none or it cannot be fetched). */
async function fetchLog(api, job) {
  try {
    const url = await api.call("core.job_download_logs", job.id, `job-${job.id}.log`);
    const response = await fetch(url);
    return response.ok ? await response.text() : null;
  } catch {
    return null;
  }
}

/** Dialog with a job's log (or its error) and a button saving the full log as a file. */
export function showJobLog(api, job, { title = "Log", state = null } = {}) {
  return modal(title, (close) => {
    const body = h("div", { testid: "log-dialog-body" });
    if (state) {
      body.append(h("p", {}, h("span", { class: `badge ${state.state}` }, state.state || "PENDING"),
        state.datetime ? ` ${formatDate(state.datetime)}` : "",
        state.error ? h("span", { class: "error" }, ` ${state.error}`) : "", state.reason ? ` ${state.reason}` : ""));
      for (const warning of state.warnings || []) body.append(h("p", { class: "notice warn" }, warning));
    }
    if (!job) {
      body.append(h("p", { class: "muted", testid: "log-empty" }, "This task has not run yet: there is no log."));
    } else {
      body.append(h("p", { class: "muted" }, `Job ${job.id} · ${job.state || ""}`
        + `${job.time_started ? ` · started ${formatDate(job.time_started)}` : ""}`
        + `${job.time_finished ? ` · finished ${formatDate(job.time_finished)}` : ""}`));
      if (job.error) body.append(h("p", { class: "error" }, job.error));
      const pre = h("pre", { testid: "log-text", class: "log" }, job.logs_excerpt || "Loading the log…");
      body.append(pre);
      fetchLog(api, job).then((text) => {
        if (text !== null) pre.textContent = text || "The log is empty.";
        else if (!job.logs_excerpt) pre.textContent = "No log is available for this job.";
      });
      body.append(h("div", { class: "actions" }, button("Download full log", async () => {
        try {
          const url = await api.call("core.job_download_logs", job.id, `job-${job.id}.log`);
          const link = h("a", { href: url, download: `job-${job.id}.log` });
          document.body.append(link);
          link.click();
          link.remove();
        } catch (error) {
          toast(error.message, "error");
        }
      }, { testid: "log-download" }), button("Close", () => close(), { testid: "log-close", kind: "primary" })));
      return body;
    }
    body.append(h("div", { class: "actions" }, button("Close", () => close(), { testid: "log-close", kind: "primary" })));
    return body;
  }, { testid: "log-dialog", wide: true });
}

// The plan ------------------------------------------------------------------------------------------------

const STEP_TEXT = {
  create_parents: (s) => `Create the missing dataset(s) ${(s.datasets || []).join(", ")}`,
  discard_resume_token: (s) => `Discard the interrupted receive on ${s.dataset}${s.reason ? ` (${s.reason})` : ""}`,
  resume: (s) => `Resume the interrupted send of ${s.source}@${s.snapshot} → ${s.target}${estimate(s)}`,
  full_send: (s) => `Send ${s.source}@${s.snapshot} in full to ${s.target}${estimate(s)}${arrives(s)}`,
  incremental_send: (s) => `Send the changes of ${s.source} from @${s.base} to @${s.snapshot} to ${s.target}${estimate(s)}${arrives(s)}`,
  destroy_snapshots: (s) => `Destroy on ${s.dataset}: ${(s.snapshots || []).join(", ")} (${reasonText(s.reason)})`,
  rollback: (s) => `Roll ${s.dataset} back to @${s.snapshot}${s.destroys && s.destroys.length ? `, destroying ${s.destroys.join(", ")}` : ""}`,
  set_readonly: (s) => `Make ${s.dataset} read-only`,
};

function estimate(step) {
  if (!step.estimate) return "";
  return ` — ${step.estimate.exact ? "" : "about "}${formatBytes(step.estimate.bytes)}`;
}

function arrives(step) {
  const list = step.arrives || [];
  return list.length > 1 ? ` (${list.length} snapshots: ${list.join(", ")})` : "";
}

function reasonText(reason) {
  return { RETENTION: "target retention", FROM_SCRATCH: "replication from scratch" }[reason] || reason || "";
}

/** Render what `replication.plan` returned: conflicts and destruction first, then each dataset's steps. */
export function renderPlan(plan) {
  if (!plan || typeof plan !== "object") return h("pre", {}, JSON.stringify(plan, null, 2));
  const root = h("div", { class: "plan", testid: "plan" });
  const datasets = Array.isArray(plan.datasets) ? plan.datasets : [];
  const conflicts = Array.isArray(plan.conflicts) ? plan.conflicts : datasets.flatMap((d) => d.conflicts || []);
  const destroys = Array.isArray(plan.destroys) ? plan.destroys : [];
  const summary = [];
  if (plan.snapshots_total != null) summary.push(`${plan.snapshots_total} snapshot(s) to send`);
  if ("estimated_bytes" in plan) {
    summary.push(plan.estimated_bytes == null ? "size unknown" : `about ${formatBytes(plan.estimated_bytes)}`);
  }
  if (destroys.length) summary.push(`${destroys.length} snapshot(s) to destroy`);
  root.append(h("p", { class: "plan-summary", testid: "plan-summary" },
    h("span", { class: `badge ${conflicts.length ? "ERROR" : "FINISHED"}` }, conflicts.length ? "Conflicts" : "Ready"),
    " ", summary.join(" · ")));
  if (conflicts.length) {
    root.append(h("div", { class: "notice error plan-conflicts", role: "alert", testid: "plan-conflicts" },
      h("strong", {}, conflicts.length === 1 ? "1 conflict: this dataset will not be replicated until it is resolved."
        : `${conflicts.length} conflicts: these datasets will not be replicated until they are resolved.`),
      h("ul", {}, conflicts.map((c) => h("li", { testid: "plan-conflict" }, c.message || c.code || JSON.stringify(c))))));
  }
  if (destroys.length) {
    root.append(h("div", { class: "notice warn", testid: "plan-destroys" },
      h("strong", {}, "The run will destroy these snapshots:"),
      h("ul", { class: "destroy" }, destroys.slice(0, 50).map((name) => h("li", {}, name))),
      destroys.length > 50 ? h("p", {}, `…and ${destroys.length - 50} more.`) : null));
  }
  for (const note of plan.notes || []) root.append(h("p", { class: "notice info" }, note));
  if (!datasets.length) root.append(h("p", { class: "muted" }, "Nothing to replicate."));
  for (const ds of datasets) {
    const box = h("section", { class: `dataset${(ds.conflicts || []).length ? " has-conflict" : ""}`, testid: "plan-dataset" },
      h("h3", {}, `${ds.source} → ${ds.target}`),
      h("p", { class: "muted" }, ds.base ? `Common snapshot: @${ds.base}; only what is newer is sent.`
        : "No common snapshot: the first send is a full one."));
    if (ds.skipped) box.append(h("p", {}, `Skipped: ${ds.skipped}`));
    if (ds.depends_on) box.append(h("p", { class: "muted" }, `Needs ${ds.depends_on} to be created first.`));
    for (const conflict of ds.conflicts || []) {
      box.append(h("p", { class: "conflict" }, conflict.message || conflict.code));
    }
    const steps = ds.steps || [];
    if (steps.length) {
      box.append(h("ol", { class: "plan-steps" }, steps.map((step) => {
        const text = STEP_TEXT[step.kind] ? STEP_TEXT[step.kind](step) : `${step.kind}: ${JSON.stringify(step)}`;
        const destructive = step.kind === "destroy_snapshots" || step.kind === "rollback";
        return h("li", { class: destructive ? "destroy" : "" }, text);
      })));
    } else if (!ds.skipped && !(ds.conflicts || []).length) {
      box.append(h("p", { class: "muted" }, "Up to date: nothing to send."));
    }
    for (const note of ds.notes || []) box.append(h("p", { class: "muted" }, note));
    root.append(box);
  }
  return root;
}

/** Ask for a plan (task id or unsaved task definition) and show it in a dialog. */
export function showPlan(api, taskOrId, title = "Replication plan") {
  return modal(title, (close) => {
    const body = h("div", { testid: "plan-dialog-body" }, h("p", { class: "muted" }, "Computing the plan…"));
    api.call("replication.plan", taskOrId).then(
      (plan) => body.replaceChildren(renderPlan(plan), closeRow(close)),
      (error) => body.replaceChildren(planError(error), closeRow(close)),
    );
    return body;
  }, { testid: "plan-dialog", wide: true });
}

export function planError(error) {
  if (error instanceof ApiError && error.fieldErrors.length) {
    // A definition is checked against "task id or definition": drop the complaint that it is not an id.
    const errors = error.fieldErrors.filter((e) => !/^replication_plan\.int$/.test(e.attribute || ""));
    return h("div", { class: "notice error", role: "alert", testid: "plan-error" },
      h("strong", {}, "The plan could not be computed; fix these first:"),
      h("ul", {}, (errors.length ? errors : error.fieldErrors).map((e) => h("li", {},
        `${fieldLabel(e.attribute)}: ${e.message}`))));
  }
  return errorBlock(error, "Plan preview");
}

/** `replication_plan.ReplicationCreate.also_include_naming_schema.0` → `also include naming schema (1)`. */
function fieldLabel(attribute) {
  if (!attribute) return "Task";
  const parts = String(attribute).split(".").slice(1).filter((p) => !/^[A-Z][A-Za-z0-9]+$/.test(p));
  const index = parts.length > 1 && /^\d+$/.test(parts[parts.length - 1]) ? ` (${Number(parts.pop()) + 1})` : "";
  return `${parts.join(" ").replace(/_/g, " ")}${index}` || "Task";
}

function closeRow(close) {
  return h("div", { class: "actions" }, button("Close", () => close(), { testid: "plan-close", kind: "primary" }));
}
