// Face verification: two photos -> same person or not, with the distance and the encoder's threshold.

import { api, paths } from "./api.js";
import { clear, errorBox, fmt, h, readFileAsBase64 } from "./dom.js";

function imageSlot(label, onfile) {
  const preview = h("div", { class: "slot-preview" }, h("span", { class: "muted" }, label));
  const input = h("input", { type: "file", accept: "image/*", class: "visually-hidden", "aria-label": label });
  const slot = h("label", { class: "drop slot" }, input, preview);
  const take = (file) => {
    if (!file || !file.type.startsWith("image/")) return;
    const url = URL.createObjectURL(file);
    clear(preview, h("img", { src: url, alt: label }));
    onfile(file);
  };
  input.addEventListener("change", () => take(input.files[0]));
  slot.addEventListener("dragover", (e) => { e.preventDefault(); slot.classList.add("over"); });
  slot.addEventListener("dragleave", () => slot.classList.remove("over"));
  slot.addEventListener("drop", (e) => {
    e.preventDefault();
    e.stopPropagation();
    slot.classList.remove("over");
    take(e.dataTransfer.files[0]);
  });
  return { slot, input };
}

export function verifyPanel(collection) {
  const files = { a: null, b: null };
  const out = h("div", { class: "verify-result" });
  const a = imageSlot("Photo A", (f) => { files.a = f; });
  const b = imageSlot("Photo B", (f) => { files.b = f; });
  const button = h("button", { type: "button", class: "button primary", onclick: run }, "Compare faces");

  async function run() {
    if (!files.a || !files.b) {
      clear(out, h("p", { class: "muted" }, "Choose two photos first."));
      return;
    }
    button.disabled = true;
    clear(out, h("p", { class: "muted" }, "Comparing…"));
    try {
      const [imageA, imageB] = await Promise.all([readFileAsBase64(files.a), readFileAsBase64(files.b)]);
      const r = await api.post(paths.verify(collection), { image_a: imageA, image_b: imageB });
      const share = Math.min(1, r.distance / (2 * r.threshold));
      clear(
        out,
        h("div", { class: `verdict ${r.same ? "same" : "different"}`, dataset: { same: String(r.same) } }, r.same ? "Same person" : "Different people"),
        h(
          "div",
          { class: "distance-bar", title: "distance (left) against the threshold (marker)" },
          h("div", { class: "fill", style: { width: fmt.pct(share) } }),
          h("div", { class: "marker", style: { left: "50%" } }),
        ),
        h("p", { class: "muted" }, `distance ${r.distance.toFixed(3)} · threshold ${r.threshold.toFixed(3)} · ${r.encoder}`),
      );
    } catch (error) {
      clear(out, errorBox(error));
    } finally {
      button.disabled = false;
    }
  }

  return h(
    "div",
    { class: "verify" },
    h("p", { class: "muted" }, "The most confident face of each photo is compared (Euclidean distance)."),
    h("div", { class: "slots" }, a.slot, b.slot),
    button,
    out,
  );
}
