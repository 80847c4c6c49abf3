// The filter builder: rows of (payload field, operator, value) ANDed into the API's filter object,
// with the fields and values offered from the payloads seen in the collection's results.

import { h } from "./dom.js";

const OPS = [
  ["eq", "is"],
  ["in", "is any of"],
  ["gte", "≥"],
  ["gt", ">"],
  ["lte", "≤"],
  ["lt", "<"],
];
const MAX_VALUES = 60; // suggestions per field
let nextId = 0;

// Payload fields seen so far: dotted path -> {types: Set, values: Map(value -> count)}.
export class FieldCatalog {
  constructor() {
    this.fields = new Map();
  }

  add(payloads) {
    for (const payload of payloads) if (payload && typeof payload === "object") this.walk(payload, "");
  }

  walk(obj, prefix) {
    for (const [key, value] of Object.entries(obj)) {
      const path = prefix + key;
      if (value && typeof value === "object" && !Array.isArray(value)) {
        this.walk(value, `${path}.`);
        continue;
      }
      for (const v of Array.isArray(value) ? value : [value]) {
        if (v === null || typeof v === "object") continue; // a list field matches if any element does
        let entry = this.fields.get(path);
        if (!entry) this.fields.set(path, (entry = { types: new Set(), values: new Map() }));
        entry.types.add(typeof v);
        if (entry.values.has(v) || entry.values.size < MAX_VALUES) entry.values.set(v, (entry.values.get(v) || 0) + 1);
      }
    }
  }

  paths() {
    return [...this.fields.keys()].sort();
  }

  typeOf(path) {
    const types = this.fields.get(path)?.types;
    if (!types || types.size !== 1) return "string";
    return [...types][0];
  }

  values(path) {
    const values = this.fields.get(path)?.values;
    return values ? [...values.entries()].sort((a, b) => b[1] - a[1]).map(([v]) => v) : [];
  }
}

export function createFilterBuilder(catalog, onchange) {
  const fieldList = h("datalist", { id: `filter-fields-${nextId++}` });
  const rows = h("div", { class: "filter-rows" });
  const preview = h("code", { class: "filter-preview" });
  const el = h(
    "div",
    { class: "filters" },
    fieldList,
    rows,
    h("div", { class: "filter-foot" }, h("button", { type: "button", class: "button small", onclick: () => addRow() }, "+ Add filter"), preview),
  );

  function refreshFields() {
    fieldList.replaceChildren(...catalog.paths().map((p) => h("option", { value: p })));
  }

  function addRow(path = "", op = "eq", value = "") {
    const values = h("datalist", { id: `filter-values-${nextId++}` });
    const fieldInput = h("input", { class: "filter-field", list: fieldList.id, placeholder: "field", value: path, "aria-label": "Filter field" });
    const opSelect = h("select", { class: "filter-op", "aria-label": "Operator" }, OPS.map(([v, label]) => h("option", { value: v, selected: v === op }, label)));
    const valueInput = h("input", { class: "filter-value", list: values.id, placeholder: "value", value, "aria-label": "Filter value" });
    const fillValues = () => values.replaceChildren(...catalog.values(fieldInput.value.trim()).map((v) => h("option", { value: String(v) })));
    const row = h(
      "div",
      { class: "filter-row" },
      fieldInput,
      opSelect,
      valueInput,
      values,
      h("button", { type: "button", class: "icon-button", title: "Remove this filter", "aria-label": "Remove filter", onclick: () => { row.remove(); changed(); } }, "×"),
    );
    fieldInput.addEventListener("change", () => { fillValues(); changed(); });
    fieldInput.addEventListener("focus", refreshFields);
    opSelect.addEventListener("change", changed);
    valueInput.addEventListener("focus", fillValues);
    valueInput.addEventListener("input", changed);
    rows.append(row);
    fillValues();
    changed();
    return row;
  }

  function convert(path, text) {
    const type = catalog.typeOf(path);
    if (type === "number" && text !== "" && !Number.isNaN(Number(text))) return Number(text);
    if (type === "boolean" && (text === "true" || text === "false")) return text === "true";
    return text;
  }

  function value() {
    const filter = {};
    for (const row of rows.querySelectorAll(".filter-row")) {
      const path = row.querySelector(".filter-field").value.trim();
      const op = row.querySelector(".filter-op").value;
      const text = row.querySelector(".filter-value").value.trim();
      if (!path || text === "") continue;
      if (op === "eq") filter[path] = convert(path, text);
      else if (op === "in") filter[path] = { in: text.split(",").map((t) => convert(path, t.trim())).filter((v) => v !== "") };
      else {
        const number = Number(text);
        const bound = Number.isNaN(number) ? text : number;
        const current = filter[path];
        filter[path] = { ...(current && typeof current === "object" && !Array.isArray(current) && !("in" in current) ? current : {}), [op]: bound };
      }
    }
    return Object.keys(filter).length ? filter : null;
  }

  function changed() {
    const f = value();
    preview.textContent = f ? JSON.stringify(f) : "no filter";
    if (onchange) onchange(f);
  }

  refreshFields();
  changed();
  return { el, value, addRow, refreshFields, clear: () => { rows.replaceChildren(); changed(); } };
}
