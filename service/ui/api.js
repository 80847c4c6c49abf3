// Calls to the ERS REST API. The API key lives in this tab's sessionStorage only: it is sent in the
// Authorization header of each call and never put in a URL, a log or any other storage. Any 401
// asks for the key (once, however many calls were refused together) and retries the call with it.

const KEY_SLOT = "ers.apiKey";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function hasKey() {
  return Boolean(sessionStorage.getItem(KEY_SLOT));
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_SLOT);
  keyListeners.forEach((fn) => fn());
}

const keyListeners = [];
export function onKeyChange(fn) {
  keyListeners.push(fn);
}

// The page supplies the prompt (a dialog); it resolves with the key the user typed.
let promptForKey = async () => {
  throw new ApiError(401, "unauthorized", "an API key is needed");
};
let pendingPrompt = null;

export function setKeyPrompt(fn) {
  promptForKey = fn;
}

async function askForKey(refused) {
  if (!pendingPrompt) {
    pendingPrompt = promptForKey(refused).then((key) => {
      sessionStorage.setItem(KEY_SLOT, key);
      keyListeners.forEach((fn) => fn());
      return key;
    });
    pendingPrompt.finally(() => {
      pendingPrompt = null;
    });
  }
  return pendingPrompt;
}

async function errorOf(response) {
  let code = `http_${response.status}`;
  let message = response.statusText || `HTTP ${response.status}`;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    } else if (body && body.detail) {
      message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    }
  } catch {
    // not JSON: keep the status text
  }
  return new ApiError(response.status, code, message);
}

// One call: `json` is sent as a JSON body, `form` (FormData) as multipart. Resolves with the
// parsed JSON body (null for 204), or with the Response itself when `raw` is set.
export async function request(method, path, { json, form, raw = false, signal } = {}) {
  let sentKey = sessionStorage.getItem(KEY_SLOT);
  for (;;) {
    const headers = {};
    if (sentKey) headers.Authorization = `Bearer ${sentKey}`;
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (form !== undefined) {
      body = form; // the browser writes the multipart boundary
    }
    const response = await fetch(path, { method, headers, body, signal, cache: "no-cache" });
    if (response.status === 401) {
      // Another call may already have fetched a new key: retry with it before asking again.
      const current = sessionStorage.getItem(KEY_SLOT);
      sentKey = current && current !== sentKey ? current : await askForKey(Boolean(sentKey));
      continue;
    }
    if (raw) return response;
    if (!response.ok) throw await errorOf(response);
    if (response.status === 204) return null;
    return response.json();
  }
}

export const api = {
  get: (path, options) => request("GET", path, options),
  post: (path, json, options) => request("POST", path, { json, ...options }),
  postForm: (path, form, options) => request("POST", path, { form, ...options }),
  put: (path, json, options) => request("PUT", path, { json, ...options }),
  del: (path, options) => request("DELETE", path, options),
};

export const enc = encodeURIComponent;

// Paths of the resources the console uses, in one place.
export const paths = {
  collections: () => "/v1/collections",
  collection: (name) => `/v1/collections/${enc(name)}`,
  search: (name) => `/v1/collections/${enc(name)}/search`,
  verify: (name) => `/v1/collections/${enc(name)}/verify`,
  migrations: (name) => `/v1/collections/${enc(name)}/migrations`,
  evalSet: (name) => `/v1/collections/${enc(name)}/eval-set`,
  rollback: (name) => `/v1/collections/${enc(name)}/migrations/rollback`,
  thumbnail: (name, id) => `/v1/collections/${enc(name)}/thumbnails/${enc(id)}`,
  jobs: () => "/v1/jobs",
  job: (id) => `/v1/jobs/${enc(id)}`,
  cancelJob: (id) => `/v1/jobs/${enc(id)}/cancel`,
};
