// Search results as cards: a thumbnail (image and face collections), score, id, payload and the
// encoder_version that made the vector. Thumbnails are fetched with the API key (an <img src> could
// not send it) and shown from blob: URLs; a face item's payload box is drawn over its photo.

import { paths, request } from "./api.js";
import { fmt, h } from "./dom.js";

const TITLE_FIELDS = ["name", "title", "text", "caption", "label", "path", "source_id"];
const CACHE_LIMIT = 600;
const cache = new Map(); // "collection\0id" -> Promise<{url, width, height} | null>
const thumbState = new Map(); // collection -> "yes" | "none" (learned from the first results)

export function thumbnailsKnownAbsent(collection) {
  return thumbState.get(collection) === "none";
}

// Probe again (items written since may have thumbnails); cached pictures stay.
export function resetThumbnailProbe(collection) {
  thumbState.delete(collection);
}

function loadThumbnail(collection, id) {
  const key = `${collection}\0${id}`;
  if (!cache.has(key)) {
    const promise = request("GET", paths.thumbnail(collection, id), { raw: true })
      .then(async (response) => {
        if (!response.ok) return null;
        const width = Number(response.headers.get("X-Source-Width")) || null;
        const height = Number(response.headers.get("X-Source-Height")) || null;
        return { url: URL.createObjectURL(await response.blob()), width, height };
      })
      .catch(() => null)
      .then((thumb) => {
        if (!thumb) cache.delete(key); // asked again next time: the item may get one
        return thumb;
      });
    cache.set(key, promise);
    if (cache.size > CACHE_LIMIT) {
      const [oldest] = cache.keys();
      cache.get(oldest).then((t) => t && URL.revokeObjectURL(t.url));
      cache.delete(oldest);
    }
  }
  return cache.get(key);
}

function titleKeyOf(payload) {
  return TITLE_FIELDS.find((key) => typeof payload[key] === "string" && payload[key]) || null;
}

export function titleOf(hit) {
  const key = titleKeyOf(hit.payload || {});
  return key ? hit.payload[key] : hit.id;
}

function payloadRows(payload) {
  const skip = new Set(["face", titleKeyOf(payload)]); // the title shows one; the face box is drawn
  return Object.entries(payload || {})
    .filter(([k]) => !skip.has(k))
    .map(([k, v]) => h("div", { class: "kv", dataset: { field: k } }, h("span", { class: "k" }, k), h("span", { class: "v", title: fmt.value(v) }, fmt.value(v))));
}

function card(hit, rank, { collection, onPick, thumbs }) {
  const payload = hit.payload || {};
  const frame = thumbs ? h("div", { class: "thumb-frame loading" }) : null;
  const el = h(
    "article",
    {
      class: `result${thumbs ? " with-thumb" : ""}`,
      tabindex: 0,
      title: "More like this",
      dataset: { id: hit.id, score: String(hit.score), version: hit.encoder_version || "" },
      onclick: (event) => {
        if (event.target.closest("details")) return;
        onPick(hit);
      },
      onkeydown: (event) => {
        if (event.key === "Enter") onPick(hit);
      },
    },
    frame ? h("div", { class: "thumb-cell" }, frame) : null,
    h(
      "div",
      { class: "result-body" },
      h("div", { class: "result-title" }, h("span", { class: "rank" }, `${rank}.`), " ", titleOf(hit)),
      h("div", { class: "result-meta" }, h("span", { class: "score", title: "score (higher is better)" }, fmt.score(hit.score)), hit.encoder_version ? h("span", { class: "pill version" }, hit.encoder_version) : null),
      h("code", { class: "result-id", title: hit.id }, hit.id),
      h("div", { class: "kv-list" }, payloadRows(payload)),
      h("details", { class: "payload" }, h("summary", {}, "payload JSON"), h("pre", {}, JSON.stringify(payload, null, 2))),
    ),
  );
  return { el, frame };
}

function fillFrame(frame, thumb, hit) {
  frame.classList.remove("loading");
  if (!thumb) {
    frame.classList.add("missing");
    frame.replaceChildren(h("span", {}, "no thumbnail"));
    return;
  }
  const img = h("img", { class: "thumb", src: thumb.url, alt: titleOf(hit), draggable: false });
  img.addEventListener("load", () => { img.dataset.loaded = "true"; });
  frame.replaceChildren(img);
  const box = hit.payload && hit.payload.face && hit.payload.face.box;
  if (Array.isArray(box) && box.length === 4 && thumb.width && thumb.height) {
    const [x1, y1, x2, y2] = box;
    frame.append(
      h("div", {
        class: "face-box",
        title: `face ${hit.payload.face.score !== undefined ? `(detector ${Number(hit.payload.face.score).toFixed(2)})` : ""}`,
        style: {
          left: `${(100 * x1) / thumb.width}%`,
          top: `${(100 * y1) / thumb.height}%`,
          width: `${(100 * (x2 - x1)) / thumb.width}%`,
          height: `${(100 * (y2 - y1)) / thumb.height}%`,
        },
      }),
    );
  }
}

// Render `hits` into `grid`; resolves once the thumbnails are in (or known absent).
export async function renderResults(grid, hits, { collection, onPick }) {
  const wantThumbs = !thumbnailsKnownAbsent(collection);
  const cards = hits.map((hit, i) => card(hit, i + 1, { collection, onPick, thumbs: wantThumbs }));
  grid.classList.toggle("text-grid", !wantThumbs);
  grid.replaceChildren(...cards.map((c) => c.el));
  if (!wantThumbs || !hits.length) return;
  if (thumbState.get(collection) !== "yes") {
    // Probe: a collection of text or vectors has no thumbnails; learn that from the first few.
    const probe = await Promise.all(hits.slice(0, 3).map((hit) => loadThumbnail(collection, hit.id)));
    if (probe.every((t) => t === null)) {
      thumbState.set(collection, "none");
      grid.classList.add("text-grid");
      cards.forEach((c) => c.frame.parentElement.remove());
      cards.forEach((c) => c.el.classList.remove("with-thumb"));
      return;
    }
    thumbState.set(collection, "yes");
  }
  await Promise.all(hits.map((hit, i) => loadThumbnail(collection, hit.id).then((t) => fillFrame(cards[i].frame, t, hit))));
}
