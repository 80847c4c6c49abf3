// Search: a text query, an image (file picker, drag-and-drop or paste), or "more like" a stored item;
// k; a filter built from the payload fields seen. Face collections add a verify panel.

import { api, paths } from "./api.js";
import { clear, collectionSelect, errorBox, field, fmt, h } from "./dom.js";
import { FieldCatalog, createFilterBuilder } from "./filters.js";
import { renderResults, resetThumbnailProbe } from "./results.js";
import { verifyPanel } from "./verify.js";

const SAMPLE_K = 24;

function randomVector(dim) {
  // a random direction: its nearest items are an arbitrary sample of the collection
  return Array.from({ length: dim }, () => Math.random() * 2 - 1);
}

export async function searchPage(host, arg, go) {
  let collections;
  try {
    collections = (await api.get(paths.collections())).collections;
  } catch (error) {
    clear(host, h("h1", {}, "Search"), errorBox(error));
    return null;
  }
  if (!collections.length) {
    clear(host, h("h1", {}, "Search"), h("div", { class: "empty" }, h("p", {}, "No collections to search yet."), h("a", { href: "#/collections" }, "Create one")));
    return null;
  }
  const info = collections.find((c) => c.name === arg) || collections[0];
  if (info.name !== arg) {
    history.replaceState(null, "", `#/search/${encodeURIComponent(info.name)}`);
  }
  const name = info.name;
  resetThumbnailProbe(name);

  const catalog = new FieldCatalog();
  const state = { mode: "text", file: null, previewUrl: null, seq: 0, isFace: false };
  const grid = h("div", { class: "results-grid" });
  const summary = h("div", { class: "results-head" });
  const status = h("div");

  // --- query inputs ---------------------------------------------------------------------------
  const textInput = h("input", { type: "search", class: "query-text", placeholder: "Describe what you are looking for", "aria-label": "Text query" });
  textInput.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); runCurrent(); } });
  const idInput = h("input", { class: "query-id", placeholder: "item id", "aria-label": "Item id" });
  idInput.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); runCurrent(); } });
  const kInput = h("input", { type: "number", class: "query-k", min: 1, max: 1000, value: 10, "aria-label": "k" });
  const fileInput = h("input", { type: "file", accept: "image/*", class: "visually-hidden query-file", "aria-label": "Image file" });
  const preview = h("div", { class: "drop-preview" }, h("strong", {}, "Drop an image here"), h("span", { class: "muted" }, "or paste one (Ctrl+V), or click to choose a file"));
  const dropZone = h("label", { class: "drop" }, fileInput, preview);
  fileInput.addEventListener("change", () => takeFile(fileInput.files[0]));
  const filters = createFilterBuilder(catalog);

  const panes = {
    text: h("div", { class: "pane" }, field("Text", textInput, "Embedded by the collection's encoder (or its text tower).")),
    image: h("div", { class: "pane" }, dropZone),
    id: h("div", { class: "pane" }, field("Similar to item", idInput, "Click any result to search with its vector.")),
    verify: verifyPanel(name),
  };
  const tabs = h("div", { class: "seg", role: "tablist" });
  const paneHost = h("div", {}, Object.values(panes));
  const queryOnly = h(
    "div",
    { class: "query-common" },
    field("k — results", kInput),
    h("div", { class: "field" }, h("span", { class: "field-label" }, "Filters"), filters.el),
    h("button", { type: "button", class: "button primary wide run-search", onclick: () => runCurrent() }, "Search"),
  );

  function renderTabs() {
    // a face collection takes photos, not text: its tabs are image, id and verify
    const modes = state.isFace
      ? [["image", "Image"], ["id", "By id"], ["verify", "Verify faces"]]
      : [["text", "Text"], ["image", "Image"], ["id", "By id"]];
    clear(
      tabs,
      modes.map(([mode, label]) =>
        h("button", { type: "button", role: "tab", class: mode === state.mode ? "active" : "", "aria-selected": String(mode === state.mode), dataset: { mode }, onclick: () => setMode(mode) }, label),
      ),
    );
  }

  function setMode(mode) {
    state.mode = mode;
    renderTabs();
    for (const [name, pane] of Object.entries(panes)) pane.hidden = name !== mode; // all stay in the page
    queryOnly.hidden = mode === "verify";
    if (mode === "text") textInput.focus();
    if (mode === "id") idInput.focus();
  }

  function takeFile(file) {
    if (!file || !file.type.startsWith("image/")) return;
    state.file = file;
    if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
    state.previewUrl = URL.createObjectURL(file);
    clear(preview, h("img", { src: state.previewUrl, alt: "query image" }), h("span", { class: "muted" }, file.name || "pasted image"));
    setMode("image");
    runCurrent();
  }

  // --- running searches -----------------------------------------------------------------------
  function k() {
    return Math.max(1, Number(kInput.value) || 10);
  }

  function runCurrent() {
    if (state.mode === "text" && textInput.value.trim()) return run({ text: textInput.value.trim() }, `“${textInput.value.trim()}”`);
    if (state.mode === "id" && idInput.value.trim()) return run({ id: idInput.value.trim() }, `more like ${idInput.value.trim()}`);
    if (state.mode === "image" && state.file) return run({ file: state.file }, `image ${state.file.name || "(pasted)"}`);
    return null;
  }

  async function run(query, label) {
    const seq = ++state.seq;
    const filter = filters.value();
    clear(status);
    grid.classList.add("busy");
    try {
      let result;
      if (query.file) {
        const form = new FormData();
        form.append("file", query.file, query.file.name || "pasted.png");
        form.append("k", String(k()));
        if (filter) form.append("filter", JSON.stringify(filter));
        result = await api.postForm(paths.search(name), form);
      } else {
        result = await api.post(paths.search(name), { ...query, k: query.vector ? SAMPLE_K : k(), ...(filter && !query.vector ? { filter } : {}) });
      }
      if (seq !== state.seq) return;
      catalog.add(result.results.map((r) => r.payload));
      filters.refreshFields();
      const face = result.results.some((r) => r.payload && r.payload.face && Array.isArray(r.payload.face.box));
      if (face && !state.isFace) {
        state.isFace = true;
        if (state.mode === "text") setMode("image");
        else renderTabs();
      }
      clear(
        summary,
        h("h2", {}, label),
        h("span", { class: "muted" }, `${result.results.length} result${result.results.length === 1 ? "" : "s"} · ${Number(result.took_ms).toFixed(1)} ms`),
        filter && !query.vector ? h("code", { class: "filter-used" }, JSON.stringify(filter)) : null,
        query.vector ? h("span", { class: "muted" }, " · click an item for more like it") : null,
      );
      if (!result.results.length) grid.replaceChildren(h("div", { class: "empty" }, "No results", filter ? " match this filter." : "."));
      else await renderResults(grid, result.results, { collection: name, onPick: moreLike });
    } catch (error) {
      if (seq === state.seq) clear(status, errorBox(error));
    } finally {
      if (seq === state.seq) grid.classList.remove("busy");
    }
  }

  function moreLike(hit) {
    idInput.value = hit.id;
    setMode("id");
    run({ id: hit.id }, `more like ${hit.id}`);
    window.scrollTo({ top: 0, behavior: "smooth" });
  }

  // --- drag-and-drop anywhere on the page, and paste ------------------------------------------
  const onPaste = (event) => {
    const file = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (file) {
      event.preventDefault();
      takeFile(file);
    }
  };
  host.addEventListener("dragover", (e) => { e.preventDefault(); dropZone.classList.add("over"); });
  host.addEventListener("dragleave", (e) => { if (!host.contains(e.relatedTarget)) dropZone.classList.remove("over"); });
  host.addEventListener("drop", (e) => {
    e.preventDefault();
    dropZone.classList.remove("over");
    takeFile([...e.dataTransfer.files].find((f) => f.type.startsWith("image/")));
  });
  document.addEventListener("paste", onPaste);

  // --- layout -----------------------------------------------------------------------------------
  clear(
    host,
    h(
      "div",
      { class: "page-head" },
      h("div", {}, h("h1", {}, "Search"), h("p", { class: "muted collection-meta" }, `${fmt.int(info.count)} items · ${info.dim}-d ${info.metric} · `, info.encoder ? h("code", {}, info.encoder) : "no encoder (vectors only)")),
      collectionSelect(collections, name, (next) => go("search", next)),
    ),
    h(
      "div",
      { class: "search-layout" },
      h("aside", { class: "card query-panel" }, tabs, paneHost, queryOnly),
      h("section", { class: "results" }, status, summary, grid),
    ),
  );
  setMode("text");
  run({ vector: randomVector(info.dim) }, "A sample of the collection");
  return () => {
    state.seq += 1; // a search still in flight renders nothing
    document.removeEventListener("paste", onPaste);
  };
}
