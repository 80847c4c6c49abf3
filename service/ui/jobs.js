// Jobs: live progress (done / total, items/s, ETA), the errors with their reasons, cancel; and a
// new job from an upload (files, with a manifest or one written here from the file names).

import { api, paths } from "./api.js";
import { clear, collectionSelect, confirmDialog, errorBox, field, fmt, h, pill, toast } from "./dom.js";

const ACTIVE = new Set(["queued", "running"]);
const FAST_MS = 1000; // while a job runs
const SLOW_MS = 5000;
const openErrors = new Set(); // jobs whose error list is open: kept open across refreshes
const STATE_KIND = { queued: "muted", running: "info", succeeded: "ok", failed: "error", cancelled: "warn" };

export async function jobsPage(host) {
  const list = h("div", { class: "jobs" }, h("p", { class: "muted" }, "Loading…"));
  const formHost = h("div");
  let timer = null;
  let stopped = false;

  clear(
    host,
    h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Jobs"), h("p", { class: "muted" }, "Batch indexing: a server directory, a manifest, or an upload.")), h("div")),
    formHost,
    list,
  );

  async function refresh() {
    clearTimeout(timer);
    let jobs;
    try {
      jobs = (await api.get(paths.jobs())).jobs;
    } catch (error) {
      if (!stopped) clear(list, errorBox(error));
      timer = stopped ? null : setTimeout(refresh, SLOW_MS);
      return;
    }
    await withErrors(jobs);
    if (stopped) return;
    jobs.sort((a, b) => (b.created_at || 0) - (a.created_at || 0));
    clear(list, jobs.length ? jobs.map((job) => jobCard(job, refresh)) : h("div", { class: "empty" }, "No jobs yet."));
    timer = setTimeout(refresh, jobs.some((j) => ACTIVE.has(j.state)) ? FAST_MS : SLOW_MS);
  }

  try {
    const collections = (await api.get(paths.collections())).collections;
    if (collections.length) clear(formHost, uploadForm(collections, refresh));
  } catch (error) {
    clear(formHost, errorBox(error));
  }
  await refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

// The list leaves out the failed items' reasons; a job's own view has them (kept once it has ended).
const finishedErrors = new Map();
async function withErrors(jobs) {
  await Promise.all(
    jobs
      .filter((job) => job.failed > 0 && !(job.errors && job.errors.length))
      .map(async (job) => {
        if (!finishedErrors.has(job.id)) {
          const full = await api.get(paths.job(job.id)).catch(() => null);
          if (!full) return;
          if (ACTIVE.has(full.state)) {
            job.errors = full.errors;
            return;
          }
          finishedErrors.set(job.id, full.errors);
        }
        job.errors = finishedErrors.get(job.id);
      }),
  );
}

function jobCard(job, refresh) {
  const processed = (job.done || 0) + (job.failed || 0);
  const share = job.total ? processed / job.total : job.state === "succeeded" ? 1 : 0;
  const source = job.source || {};
  return h(
    "article",
    { class: "card job", dataset: { job: job.id, state: job.state } },
    h(
      "div",
      { class: "card-head" },
      h("div", { class: "job-title" }, pill(job.state, STATE_KIND[job.state] || ""), h("strong", {}, job.collection), h("code", { class: "muted", title: job.id }, job.id.slice(0, 8)), h("span", { class: "muted" }, source.type === "upload" ? "upload" : `${source.type || ""} ${source.path || ""}`)),
      ACTIVE.has(job.state) ? h("button", { type: "button", class: "button small danger-ghost", onclick: () => cancel(job, refresh) }, "Cancel") : null,
    ),
    h(
      "div",
      { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": Math.round(100 * share) },
      h("div", { class: `bar ${job.failed ? "with-errors" : ""}`, style: { width: fmt.pct(share) } }),
    ),
    h(
      "dl",
      { class: "stats inline" },
      stat("Progress", h("span", { class: "job-progress" }, `${fmt.int(processed)} / ${job.total === null || job.total === undefined ? "?" : fmt.int(job.total)}`), h("span", { class: "job-pct" }, job.total ? fmt.pct(share) : "")),
      stat("Done", fmt.int(job.done)),
      stat("Failed", fmt.int(job.failed)),
      stat("Rate", fmt.rate(job.items_per_s)),
      ACTIVE.has(job.state)
        ? stat("ETA", fmt.duration(job.eta_s))
        : stat("Took", job.finished_at && job.started_at ? fmt.duration(job.finished_at - job.started_at) : "—"),
      stat("Started", fmt.when(job.started_at || job.created_at)),
    ),
    job.message ? h("p", { class: "muted" }, job.message) : null,
    job.errors && job.errors.length
      ? h(
          "details",
          {
            class: "job-errors",
            open: openErrors.has(job.id),
            ontoggle: (e) => (e.target.open ? openErrors.add(job.id) : openErrors.delete(job.id)),
          },
          h("summary", {}, `${fmt.int(job.failed)} failed item${job.failed === 1 ? "" : "s"}${job.failed > job.errors.length ? ` (first ${job.errors.length} shown)` : ""}${job.dead_letters ? ` · ${job.dead_letters} dead letters` : ""}`),
          h("table", { class: "table compact" }, h("tbody", {}, job.errors.map((e) => h("tr", {}, h("td", {}, h("code", {}, e.id)), h("td", {}, e.reason))))),
        )
      : null,
  );
}

function stat(label, value, note) {
  return h("div", { class: "stat" }, h("dt", {}, label), h("dd", {}, value, note ? h("small", {}, " ", note) : null));
}

async function cancel(job, refresh) {
  const ok = await confirmDialog({
    title: "Cancel this job?",
    body: h("p", {}, `Items already written to ${job.collection} stay; the rest of the source is not read.`),
    confirm: "Cancel job",
    danger: true,
  });
  if (!ok) return;
  try {
    await api.post(paths.cancelJob(job.id), {});
    toast("Job cancelled");
  } catch (error) {
    toast(error.message, "error");
  }
  refresh();
}

function uploadForm(collections, refresh) {
  let collection = collections[0].name;
  const files = h("input", { type: "file", multiple: true, class: "job-files", "aria-label": "Files" });
  const manifest = h("input", { type: "file", accept: ".jsonl,.ndjson,.csv", class: "job-manifest", "aria-label": "Manifest" });
  const batch = h("input", { type: "number", min: 1, placeholder: "server default", class: "job-batch" });
  const status = h("div");
  return h(
    "form",
    {
      class: "card form-grid upload",
      onsubmit: async (event) => {
        event.preventDefault();
        const form = new FormData();
        form.append("collection", collection);
        const chosen = [...files.files];
        if (manifest.files[0]) form.append("manifest", manifest.files[0]);
        else if (chosen.length) {
          // one line per file: its name is the id and the path (resolved inside the upload)
          const lines = chosen.map((f) => JSON.stringify({ id: f.name, path: f.name }));
          form.append("manifest", new Blob([`${lines.join("\n")}\n`], { type: "application/x-ndjson" }), "manifest.jsonl");
        } else {
          clear(status, errorBox(new Error("Choose files, a manifest, or both.")));
          return;
        }
        chosen.forEach((f) => form.append("file", f, f.name));
        if (batch.value) form.append("options", JSON.stringify({ batch_size: Number(batch.value) }));
        try {
          const job = await api.postForm(paths.jobs(), form);
          toast(`Job ${job.id.slice(0, 8)} started`);
          clear(status);
          files.value = "";
          manifest.value = "";
          refresh();
        } catch (error) {
          clear(status, errorBox(error));
        }
      },
    },
    h("h2", { class: "span-all" }, "Start a job from an upload"),
    field("Collection", collectionSelect(collections, collection, (c) => { collection = c; })),
    field("Files", files, "images or text files; without a manifest each file's name is its id"),
    field("Manifest (optional)", manifest, "JSON lines or CSV: id, path | text | vector | record, payload"),
    field("Batch size", batch),
    h("div", { class: "span-all" }, status),
    h("div", { class: "span-all actions" }, h("button", { type: "submit", class: "button primary" }, "Start job")),
  );
}
