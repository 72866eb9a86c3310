// A small JSON-RPC 2.0 client for the middleware's WebSocket API (truenas-api.md §1).
//
// The page uses legacy jobs (the server's default and what the TrueNAS web UI does): a job method answers
// with the job id at once and the job is then followed through `core.get_jobs` collection_update events.

const TERMINAL_JOB_STATES = new Set(["SUCCESS", "FAILED", "ABORTED"]);

export const METHOD_NOT_FOUND = -32601;
export const INVALID_PARAMS = -32602;
export const ENOTAUTHENTICATED = 207;

/** An error object from a JSON-RPC response, or a failed job. */
export class ApiError extends Error {
  constructor({ code = null, message = "", data = null } = {}, method = "") {
    const reason = (data && data.reason) || message || "Request failed";
    super(reason);
    this.name = "ApiError";
    this.code = code;
    this.method = method;
    this.data = data || {};
    this.errno = this.data.error ?? null;
    this.errname = this.data.errname ?? null;
  }

  /** True when the server does not have the method at all (a feature not built yet). */
  get isMethodMissing() {
    return this.code === METHOD_NOT_FOUND;
  }

  get isValidation() {
    return this.code === INVALID_PARAMS || (Array.isArray(this.data.extra) && this.data.type === "VALIDATION");
  }

  /** Validation errors as {attribute, message, errno}; attribute may be null (whole request). */
  get fieldErrors() {
    const extra = Array.isArray(this.data.extra) ? this.data.extra : [];
    return extra
      .filter((item) => Array.isArray(item))
      .map(([attribute, message, errno]) => ({ attribute, message, errno }));
  }
}

/** A job that ended FAILED or ABORTED; `job` is the final job object. */
export class JobError extends ApiError {
  constructor(job) {
    const info = job.exc_info || {};
    const validation = info.type === "VALIDATION";
    super({
      code: validation ? INVALID_PARAMS : -32001,
      message: job.error || `Job ${job.state}`,
      data: { error: info.errno, reason: job.error || `Job ${job.state}`, extra: info.extra, type: info.type },
    }, job.method);
    this.name = "JobError";
    this.job = job;
  }
}

// ejson: datetimes travel as {"$date": ms}; the page works with Date objects.
function reviver(_key, value) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0] === "$date" && typeof value.$date === "number") {
      return new Date(value.$date);
    }
  }
  return value;
}

function replacer(key, value) {
  const original = this[key];
  return original instanceof Date ? { $date: original.getTime() } : value;
}

export function apiUrl(loc = window.location) {
  const scheme = loc.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${loc.host}/api/current`;
}

export class Api extends EventTarget {
  constructor(url = apiUrl()) {
    super();
    this.url = url;
    this.ws = null;
    this.nextId = 1;
    this.pending = new Map();
    this.handlers = new Map(); // collection -> Set(handler)
    this.subscriptionIds = new Map(); // collection -> Promise<server subscription id>
    this.jobs = new Map(); // job id -> latest job object seen in events
    this.jobWaiters = new Map(); // job id -> Set(callback)
  }

  get connected() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  /** Open the socket and choose legacy job reporting. Resolves when the server has answered set_options. */
  connect() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      this.ws = ws;
      let opened = false;
      ws.addEventListener("open", () => {
        opened = true;
        this.call("core.set_options", { legacy_jobs: true }).then(() => resolve(this), reject);
      });
      ws.addEventListener("message", (event) => this._receive(event.data));
      ws.addEventListener("close", (event) => {
        if (this.ws === ws) this.ws = null;
        const error = new ApiError({ message: "Connection to the server was lost" });
        for (const { reject: rejectCall } of this.pending.values()) rejectCall(error);
        this.pending.clear();
        this.subscriptionIds.clear();
        if (!opened) reject(new ApiError({ message: "Cannot connect to the server" }));
        this.dispatchEvent(new CustomEvent("close", { detail: { code: event.code, reason: event.reason } }));
      });
    });
  }

  close() {
    if (this.ws) this.ws.close();
  }

  /** Call `method` with positional params; resolves with `result`, rejects with ApiError. */
  call(method, ...params) {
    if (!this.connected) return Promise.reject(new ApiError({ message: "Not connected to the server" }, method));
    const id = `p${this.nextId++}`;
    const message = JSON.stringify({ jsonrpc: "2.0", id, method, params }, replacer);
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, method });
      this.ws.send(message);
    });
  }

  _receive(text) {
    let message;
    try {
      message = JSON.parse(text, reviver);
    } catch {
      return;
    }
    if (message.method === "collection_update") {
      this._event(message.params || {});
      return;
    }
    if (message.method === "notify_unsubscribed") {
      const collection = message.params && message.params.collection;
      this.subscriptionIds.delete(collection);
      return;
    }
    const waiter = this.pending.get(message.id);
    if (!waiter) return;
    this.pending.delete(message.id);
    if ("error" in message) waiter.reject(new ApiError(message.error, waiter.method));
    else waiter.resolve(message.result);
  }

  _event(params) {
    if (params.collection === "core.get_jobs" && params.id != null) {
      const previous = this.jobs.get(params.id) || {};
      const job = { ...previous, ...(params.fields || {}) };
      this.jobs.set(params.id, job);
      for (const callback of this.jobWaiters.get(params.id) || []) callback(job);
    }
    for (const handler of this.handlers.get(params.collection) || []) {
      try {
        handler(params);
      } catch (error) {
        console.error(error);
      }
    }
  }

  /**
   * Receive `collection_update` events of `collection`. Resolves with a function that stops them.
   * Several handlers share one server subscription. Rejects (ApiError) if the server refuses the event.
   */
  async subscribe(collection, handler) {
    if (!this.handlers.has(collection)) this.handlers.set(collection, new Set());
    this.handlers.get(collection).add(handler);
    try {
      await this._ensureSubscribed(collection);
    } catch (error) {
      this.handlers.get(collection).delete(handler);
      throw error;
    }
    return () => {
      const set = this.handlers.get(collection);
      if (set) set.delete(handler);
    };
  }

  _ensureSubscribed(collection) {
    if (!this.subscriptionIds.has(collection)) {
      const request = this.call("core.subscribe", collection);
      request.catch(() => this.subscriptionIds.delete(collection));
      this.subscriptionIds.set(collection, request);
    }
    return this.subscriptionIds.get(collection);
  }

  /**
   * Start a job method and follow it. `onUpdate(job)` gets the merged job object on every event.
   * Returns {id, done}: `done` resolves with the final job on SUCCESS and rejects with JobError otherwise.
   */
  async startJob(method, params = [], onUpdate = () => {}) {
    await this._ensureSubscribed("core.get_jobs");
    const id = await this.call(method, ...params);
    return { id, done: this.followJob(id, onUpdate) };
  }

  /** Follow an existing job by id (see startJob). */
  followJob(id, onUpdate = () => {}) {
    return new Promise((resolve, reject) => {
      let finished = false;
      const update = (job) => {
        if (finished) return;
        onUpdate(job);
        if (TERMINAL_JOB_STATES.has(job.state)) {
          finished = true;
          this.jobWaiters.get(id)?.delete(update);
          if (job.state === "SUCCESS") resolve(job);
          else reject(new JobError(job));
        }
      };
      if (!this.jobWaiters.has(id)) this.jobWaiters.set(id, new Set());
      this.jobWaiters.get(id).add(update);
      if (this.jobs.has(id)) update(this.jobs.get(id));
      // The job may have ended before our subscription saw it: ask once.
      this._ensureSubscribed("core.get_jobs")
        .then(() => this.call("core.get_jobs", [["id", "=", id]]))
        .then((jobs) => {
          if (jobs.length && !finished) {
            const job = { ...jobs[0], ...(this.jobs.get(id) || {}) };
            if (TERMINAL_JOB_STATES.has(jobs[0].state)) Object.assign(job, jobs[0]);
            this.jobs.set(id, job);
            update(job);
          }
        })
        .catch((error) => {
          if (!finished) {
            finished = true;
            reject(error);
          }
        });
    });
  }

  // Authentication --------------------------------------------------------------------------------------

  /** Password login: auth.login_ex PASSWORD_PLAIN, falling back to auth.login on older servers. */
  async loginWithPassword(username, password) {
    try {
      const response = await this.call("auth.login_ex", { mechanism: "PASSWORD_PLAIN", username, password });
      return response.response_type === "SUCCESS";
    } catch (error) {
      if (error instanceof ApiError && error.isMethodMissing) return this.call("auth.login", username, password);
      throw error;
    }
  }

  /** API-key login: login_ex API_KEY_PLAIN when a username is given, else auth.login_with_api_key. */
  async loginWithApiKey(apiKey, username = "") {
    if (username) {
      const response = await this.call("auth.login_ex", { mechanism: "API_KEY_PLAIN", username, api_key: apiKey });
      return response.response_type === "SUCCESS";
    }
    return this.call("auth.login_with_api_key", apiKey);
  }

  async loginWithToken(token) {
    try {
      return await this.call("auth.login_with_token", token);
    } catch (error) {
      if (!(error instanceof ApiError && error.isMethodMissing)) throw error;
      const response = await this.call("auth.login_ex", { mechanism: "TOKEN_PLAIN", token });
      return response.response_type === "SUCCESS";
    }
  }
}
