// Collections: each one's size, vectors, encoder, index (and whether one is building) and its
// segments per encoder version; create one; delete one after a confirmation.

import { api, paths } from "./api.js";
import { clear, confirmDialog, errorBox, field, fmt, h, pill, toast } from "./dom.js";

const REFRESH_MS = 2000; // while an index builds

export async function collectionsPage(host, _arg, go) {
  const list = h("div", { class: "card-list" }, h("p", { class: "muted" }, "Loading…"));
  const formHost = h("div");
  let timer = null;
  let stopped = false;

  const header = h(
    "div",
    { class: "page-head" },
    h("div", {}, h("h1", {}, "Collections"), h("p", { class: "muted" }, "Vectors with JSON payloads, searched with FAISS.")),
    h("button", { type: "button", class: "button primary", onclick: () => toggleForm() }, "New collection"),
  );
  clear(host, header, formHost, list);

  function toggleForm() {
    if (formHost.firstChild) clear(formHost);
    else clear(formHost, createForm(refresh, () => clear(formHost)));
  }

  async function refresh() {
    clearTimeout(timer);
    let collections;
    try {
      collections = (await api.get(paths.collections())).collections;
    } catch (error) {
      clear(list, errorBox(error));
      return;
    }
    const details = await Promise.all(
      collections.map((c) => api.get(paths.migrations(c.name)).catch(() => null)),
    );
    if (stopped) return;
    if (!collections.length) {
      clear(list, h("div", { class: "empty" }, h("p", {}, "No collections yet."), h("p", { class: "muted" }, "Create one above, or run `make demo`.")));
      return;
    }
    clear(list, collections.map((c, i) => collectionCard(c, details[i], go, refresh)));
    if (collections.some((c, i) => c.building || ((details[i] && details[i].segments) || []).some((s) => s.building))) {
      timer = setTimeout(refresh, REFRESH_MS);
    }
  }

  await refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function collectionCard(c, detail, go, refresh) {
  const segments = (detail && detail.segments) || [];
  const versions = (detail && detail.versions) || {};
  const indexCell = [h("code", {}, c.active_index), c.building ? pill("building", "warn spin") : null];
  if (c.nprobe) indexCell.push(h("span", { class: "muted" }, ` nprobe ${c.nprobe}`));
  return h(
    "article",
    { class: "card collection", dataset: { collection: c.name } },
    h(
      "div",
      { class: "card-head" },
      h("h2", {}, h("a", { href: `#/search/${encodeURIComponent(c.name)}` }, c.name)),
      h(
        "div",
        { class: "actions" },
        h("button", { type: "button", class: "button small", onclick: () => go("search", c.name) }, "Search"),
        h("button", { type: "button", class: "button small", onclick: () => go("upgrades", c.name) }, "Upgrades"),
        h("button", { type: "button", class: "button small danger-ghost", onclick: () => remove(c, refresh) }, "Delete"),
      ),
    ),
    h(
      "dl",
      { class: "stats" },
      stat("Items", fmt.int(c.count), c.indexed !== c.count ? `${fmt.int(c.indexed)} indexed` : null, "count"),
      stat("Dim", c.dim, null, "dim"),
      stat("Metric", c.metric, null, "metric"),
      stat("Encoder", c.encoder ? h("code", {}, c.encoder) : h("span", { class: "muted" }, "none (vectors)"), null, "encoder"),
      stat("Index", indexCell, c.index !== "auto" ? `spec ${c.index}` : "auto", "index"),
      stat("Kept sources", c.keep_sources ? "yes" : "no", null, "keep-sources"),
    ),
    segments.length ? segmentTable(segments, versions) : null,
  );
}

function stat(label, value, note, key) {
  return h("div", { class: "stat", dataset: { stat: key } }, h("dt", {}, label), h("dd", {}, value, note ? h("small", {}, note) : null));
}

function segmentTable(segments, versions) {
  return h(
    "table",
    { class: "table compact segments" },
    h("thead", {}, h("tr", {}, ["Segment (encoder version)", "Items", "Indexed", "Dim", "Index", ""].map((t) => h("th", {}, t)))),
    h(
      "tbody",
      {},
      segments.map((s) =>
        h(
          "tr",
          { dataset: { version: s.encoder_version || "" } },
          h("td", {}, h("code", {}, s.encoder_version || "(no encoder)")),
          h("td", {}, fmt.int(versions[s.encoder_version] ?? versions[String(s.encoder_version)] ?? null)),
          h("td", {}, fmt.int(s.indexed)),
          h("td", {}, s.dim),
          h("td", {}, h("code", {}, s.active_index)),
          h("td", {}, s.building ? pill("building", "warn spin") : null),
        ),
      ),
    ),
  );
}

async function remove(c, refresh) {
  const ok = await confirmDialog({
    title: `Delete “${c.name}”?`,
    body: [h("p", {}, `Its ${fmt.int(c.count)} items, their vectors and indexes are deleted. This cannot be undone.`)],
    confirm: "Delete collection",
    danger: true,
  });
  if (!ok) return;
  try {
    await api.del(paths.collection(c.name));
    toast(`Deleted ${c.name}`);
  } catch (error) {
    toast(error.message, "error");
  }
  refresh();
}

function createForm(refresh, close) {
  const name = h("input", { required: true, pattern: "[A-Za-z0-9][A-Za-z0-9_-]{0,63}", placeholder: "e.g. products", name: "name" });
  const encoder = h("input", { placeholder: "e.g. minilm-l6@1 (optional)", name: "encoder" });
  const dim = h("input", { type: "number", min: 1, placeholder: "from the encoder", name: "dim" });
  const metric = h("select", { name: "metric" }, ["", "cosine", "ip", "l2"].map((m) => h("option", { value: m }, m || "default")));
  const index = h("input", { value: "auto", name: "index" });
  const keep = h("input", { type: "checkbox", name: "keep_sources" });
  const status = h("div");
  const form = h(
    "form",
    {
      class: "card form-grid",
      onsubmit: async (event) => {
        event.preventDefault();
        const body = { name: name.value.trim(), index: index.value.trim() || "auto", keep_sources: keep.checked };
        if (encoder.value.trim()) body.encoder = encoder.value.trim();
        if (dim.value) body.dim = Number(dim.value);
        if (metric.value) body.metric = metric.value;
        try {
          await api.post(paths.collections(), body);
          toast(`Created ${body.name}`);
          close();
          refresh();
        } catch (error) {
          clear(status, errorBox(error));
        }
      },
    },
    h("h2", { class: "span-all" }, "New collection"),
    field("Name", name),
    field("Encoder", encoder, "name@version; its spec gives the dim"),
    field("Dim", dim, "needed without an encoder"),
    field("Metric", metric),
    field("Index", index, "auto, or a FAISS factory string such as HNSW32"),
    h("label", { class: "check" }, keep, " Keep sources (lets a migration re-encode in the background)"),
    h("div", { class: "span-all" }, status),
    h(
      "div",
      { class: "span-all actions" },
      h("button", { type: "submit", class: "button primary" }, "Create"),
      h("button", { type: "button", class: "button ghost", onclick: close }, "Cancel"),
    ),
  );
  return form;
}
