// Widgets used by several pages: job progress, job logs, the replication plan view.

import { ApiError } from "./api.js";
import { button, errorBlock, formatBytes, formatDuration, h, modal, toast } from "./ui.js";

/** A live progress block for a job; call `update(job)` with each job object. */
export function jobProgress(testid = "job-progress") {
  const bar = h("progress", { max: 100, value: 0, "aria-label": "Progress" });
  const description = h("div", { class: "description", testid: `${testid}-description` });
  const bytes = h("span", { testid: `${testid}-bytes` });
  const rate = h("span", { testid: `${testid}-rate` });
  const eta = h("span", { testid: `${testid}-eta` });
  const element = h("div", { class: "progress", testid, role: "status", "aria-live": "polite" },
    description, bar, h("div", { class: "meta" }, bytes, rate, eta));
  function update(job) {
    const progress = job.progress || {};
    if (typeof progress.percent === "number") bar.value = progress.percent;
    else bar.removeAttribute("value");
    description.textContent = progress.description || (job.state === "WAITING" ? "Waiting to start…" : job.state || "");
    const extra = progress.extra && typeof progress.extra === "object" ? progress.extra : {};
    bytes.textContent = extra.bytes_sent != null
      ? `${formatBytes(extra.bytes_sent)}${extra.bytes_total != null ? ` of ${formatBytes(extra.bytes_total)}` : ""}` : "";
    rate.textContent = extra.rate != null ? `${formatBytes(extra.rate)}/s` : "";
    eta.textContent = extra.eta != null ? `ETA ${formatDuration(extra.eta)}` : "";
  }
  return { element, update };
}

/** Dialog with a job's log excerpt (or its error) and a link to download the full log. */
export function showJobLog(api, job, { title = "Log", state = null } = {}) {
  return modal(title, (close) => {
    const body = h("div", { testid: "log-dialog-body" });
    if (state) {
      body.append(h("p", {}, h("span", { class: `badge ${state.state}` }, state.state || "PENDING"),
        state.error ? ` ${state.error}` : "", state.reason ? ` ${state.reason}` : ""));
      for (const warning of state.warnings || []) body.append(h("p", { class: "notice warn" }, warning));
    }
    if (!job) {
      body.append(h("p", { class: "muted", testid: "log-empty" }, "This task has not run since the server started; there is no log."));
    } else {
      body.append(h("p", { class: "muted" }, `Job ${job.id} · ${job.method || ""} · ${job.state || ""}`));
      if (job.error) body.append(h("p", { class: "error" }, job.error));
      body.append(h("pre", { testid: "log-excerpt" }, job.logs_excerpt || (job.state === "RUNNING" || job.state === "WAITING"
        ? "The job is still running; the log is complete when it ends." : "No log excerpt.")));
      const download = button("Download full log", async () => {
        try {
          const url = await api.call("core.job_download_logs", job.id, `job-${job.id}.log`);
          const link = h("a", { href: url, download: `job-${job.id}.log` });
          document.body.append(link);
          link.click();
          link.remove();
        } catch (error) {
          toast(error.message, "error");
        }
      }, { testid: "log-download" });
      body.append(download);
    }
    body.append(h("div", { class: "actions" }, button("Close", () => close(), { testid: "log-close", kind: "primary" })));
    return body;
  }, { testid: "log-dialog", wide: true });
}

// The plan ------------------------------------------------------------------------------------------------

const STEP_TEXT = {
  create_parents: (s) => `Create ${(s.datasets || []).join(", ")}`,
  discard_resume_token: (s) => `Discard the interrupted receive on ${s.dataset}${s.reason ? ` (${s.reason})` : ""}`,
  resume: (s) => `Resume the interrupted send of ${s.source}@${s.snapshot} → ${s.target}${estimate(s)}`,
  full_send: (s) => `Full send ${s.source}@${s.snapshot} → ${s.target}${estimate(s)}${arrives(s)}`,
  incremental_send: (s) => `Incremental send ${s.source}@${s.base} → @${s.snapshot} to ${s.target}${estimate(s)}${arrives(s)}`,
  destroy_snapshots: (s) => `Destroy on ${s.dataset}: ${(s.snapshots || []).join(", ")} (${reasonText(s.reason)})`,
  rollback: (s) => `Roll ${s.dataset} back to @${s.snapshot}${s.destroys && s.destroys.length ? `, destroying ${s.destroys.join(", ")}` : ""}`,
  set_readonly: (s) => `Set readonly=on on ${s.dataset}`,
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

/** Render whatever `replication.plan` returned, readably; unknown shapes fall back to JSON. */
export function renderPlan(plan) {
  if (!plan || typeof plan !== "object") return h("pre", {}, JSON.stringify(plan, null, 2));
  const root = h("div", { class: "plan", testid: "plan" });
  const summary = [];
  if ("ok" in plan) summary.push(plan.ok ? "No conflicts." : "There are conflicts: the affected datasets will not be replicated.");
  if (plan.snapshots_total != null) summary.push(`${plan.snapshots_total} snapshot(s) to send`);
  if ("estimated_bytes" in plan) summary.push(plan.estimated_bytes == null ? "size unknown" : `about ${formatBytes(plan.estimated_bytes)}`);
  root.append(h("p", { class: plan.ok === false ? "conflict" : "", testid: "plan-summary" }, summary.join(" · ")));
  for (const note of plan.notes || []) root.append(h("p", { class: "notice info" }, note));
  const datasets = Array.isArray(plan.datasets) ? plan.datasets : [];
  if (!datasets.length) root.append(h("p", { class: "muted" }, "Nothing to replicate."));
  for (const ds of datasets) {
    const box = h("section", { class: "dataset", testid: "plan-dataset" },
      h("h3", {}, `${ds.source} → ${ds.target}`),
      h("p", { class: "muted" }, ds.base ? `Common base: @${ds.base}` : "No common snapshot: the first send is a full one."));
    if (ds.skipped) box.append(h("p", {}, `Skipped: ${ds.skipped}`));
    if (ds.depends_on) box.append(h("p", { class: "muted" }, `Needs ${ds.depends_on} to be created first.`));
    for (const conflict of ds.conflicts || []) {
      box.append(h("p", { class: "conflict", testid: "plan-conflict" }, conflict.message || conflict.code || JSON.stringify(conflict)));
    }
    const steps = ds.steps || [];
    if (steps.length) {
      box.append(h("ul", {}, steps.map((step) => {
        const text = STEP_TEXT[step.kind] ? STEP_TEXT[step.kind](step) : `${step.kind}: ${JSON.stringify(step)}`;
        const destructive = step.kind === "destroy_snapshots" || step.kind === "rollback";
        return h("li", { class: destructive ? "destroy" : "" }, text);
      })));
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
    return h("div", { class: "notice error", role: "alert" }, h("strong", {}, "The plan could not be computed:"),
      h("ul", {}, error.fieldErrors.map((e) => h("li", {}, `${e.attribute || "task"}: ${e.message}`))));
  }
  return errorBlock(error, "Plan preview");
}

function closeRow(close) {
  return h("div", { class: "actions" }, button("Close", () => close(), { testid: "plan-close", kind: "primary" }));
}
