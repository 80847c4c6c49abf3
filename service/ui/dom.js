// Small DOM helpers. Text from the API only ever becomes a text node (never innerHTML).

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name === "style" && typeof value === "object") Object.assign(el.style, value);
    else if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (value === true) el.setAttribute(name, "");
    else if (name in el && !name.includes("-") && name !== "list") el[name] = value;
    else el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const fmt = {
  int: (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US")),
  score: (x) => (x === null || x === undefined ? "—" : Number(x).toFixed(4)),
  rate: (x) => (x === null || x === undefined ? "—" : `${Number(x).toLocaleString("en-US", { maximumFractionDigits: 1 })}/s`),
  pct: (x) => `${(100 * x).toFixed(1)}%`,
  duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const s = Math.round(seconds);
    if (seconds < 10) return `${Number(seconds).toFixed(1)} s`;
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  },
  when(epoch) {
    if (!epoch) return "—";
    const date = new Date(epoch * 1000);
    const options = { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" };
    if (date.getFullYear() !== new Date().getFullYear()) options.year = "numeric";
    return date.toLocaleString("en-GB", options);
  },
  value(v) {
    if (v === null || v === undefined) return "—";
    if (Array.isArray(v)) return v.map((x) => fmt.value(x)).join(", ");
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  },
};

export function pill(text, kind = "") {
  return h("span", { class: `pill ${kind}` }, text);
}

export function errorBox(error) {
  const code = error && error.code ? `${error.code}: ` : "";
  return h("div", { class: "alert error", role: "alert" }, code, error && error.message ? error.message : String(error));
}

// A modal confirmation; resolves true when the user confirms.
export function confirmDialog({ title, body, confirm = "Confirm", danger = false }) {
  return new Promise((resolve) => {
    const dialog = h("dialog", { class: "modal confirm", "aria-label": title });
    const done = (answer) => {
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    dialog.append(
      h("h2", {}, title),
      h("div", { class: "modal-body" }, body),
      h(
        "div",
        { class: "modal-actions" },
        h("button", { type: "button", class: "button ghost", onclick: () => done(false) }, "Cancel"),
        h("button", { type: "button", class: `button ${danger ? "danger" : "primary"}`, onclick: () => done(true) }, confirm),
      ),
    );
    dialog.addEventListener("cancel", (event) => {
      event.preventDefault();
      done(false);
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

export function toast(message, kind = "ok") {
  const host = document.getElementById("toasts");
  const el = h("div", { class: `toast ${kind}`, role: "status" }, message);
  host.append(el);
  setTimeout(() => el.remove(), 4000);
}

// A labelled form control.
export function field(label, control, hint) {
  return h("label", { class: "field" }, h("span", { class: "field-label" }, label), control, hint ? h("span", { class: "hint" }, hint) : null);
}

export function readFileAsBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// A <select> of the collections, the current one selected.
export function collectionSelect(collections, current, onchange) {
  return h(
    "select",
    { class: "collection-select", "aria-label": "Collection", onchange: (e) => onchange(e.target.value) },
    collections.map((c) => h("option", { value: c.name, selected: c.name === current }, c.name)),
  );
}
