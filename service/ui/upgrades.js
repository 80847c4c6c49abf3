// Upgrades: what a collection serves, proposing a migration to a compatible encoder (the server's
// compatibility report, or its refusal and the reason), rollback, and the history with its reports.

import { api, paths } from "./api.js";
import { clear, collectionSelect, confirmDialog, errorBox, field, fmt, h, pill } from "./dom.js";

export async function upgradesPage(host, arg, go) {
  let collections;
  try {
    collections = (await api.get(paths.collections())).collections;
  } catch (error) {
    clear(host, h("h1", {}, "Upgrades"), errorBox(error));
    return null;
  }
  const withEncoder = collections.filter((c) => c.encoder);
  if (!withEncoder.length) {
    clear(host, h("h1", {}, "Upgrades"), h("div", { class: "empty" }, "No collection is bound to an encoder: there is nothing to upgrade."));
    return null;
  }
  const info = withEncoder.find((c) => c.name === arg) || withEncoder[0];
  if (info.name !== arg) history.replaceState(null, "", `#/upgrades/${encodeURIComponent(info.name)}`);
  const name = info.name;
  const outcome = h("div", { class: "outcome" });
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const known = new Set(collections.map((c) => c.encoder).filter(Boolean));
  const draft = { to: "" }; // the proposal being typed survives the refresh after a refusal

  clear(
    host,
    h(
      "div",
      { class: "page-head" },
      h("div", {}, h("h1", {}, "Upgrades"), h("p", { class: "muted" }, "Switch a collection to a backward-compatible encoder without re-embedding; roll back at any time.")),
      collectionSelect(withEncoder, name, (next) => go("upgrades", next)),
    ),
    body,
  );

  async function refresh() {
    let state;
    let evalSet;
    try {
      [state, evalSet] = await Promise.all([api.get(paths.migrations(name)), api.get(paths.evalSet(name)).catch(() => null)]);
    } catch (error) {
      clear(body, errorBox(error));
      return;
    }
    state.history.forEach((e) => { if (e.to) known.add(e.to); if (e.from) known.add(e.from); });
    clear(
      body,
      h(
        "div",
        { class: "two-col" },
        h("div", {}, servingCard(state, evalSet, name), historyCard(state.history)),
        proposeCard(name, info, state, known, draft, outcome, refresh),
      ),
    );
  }

  await refresh();
  return null;
}

function evalSetNote(evalSet, name) {
  if (!evalSet || !evalSet.size) {  // GET .../eval-set answers 404 when there is none
    return h("p", { class: "muted eval-set" }, "No evaluation set: the gate has nothing to measure, so a migration needs force (or ", h("code", {}, `PUT /v1/collections/${name}/eval-set`), " with labelled inputs first).");
  }
  return h("p", { class: "eval-set" }, `The gate measures each proposal on ${fmt.int(evalSet.size)} labelled inputs (${fmt.int(evalSet.labels)} labels), set ${fmt.when(evalSet.updated_at)}.`);
}

function servingCard(state, evalSet, name) {
  return h(
    "section",
    { class: "card serving" },
    h("h2", {}, "Serving"),
    h("dl", { class: "stats two" }, h("div", { class: "stat" }, h("dt", {}, "Query encoder"), h("dd", {}, h("code", { class: "active-encoder" }, state.active))), h("div", { class: "stat" }, h("dt", {}, "Dim"), h("dd", {}, state.dim))),
    h(
      "table",
      { class: "table compact" },
      h("thead", {}, h("tr", {}, ["Stored vectors of", "Items", "Index"].map((t) => h("th", {}, t)))),
      h(
        "tbody",
        {},
        Object.entries(state.versions).map(([version, count]) => {
          const seg = state.segments.find((s) => String(s.encoder_version) === version);
          return h("tr", {}, h("td", {}, h("code", {}, version)), h("td", {}, fmt.int(count)), h("td", {}, seg ? h("code", {}, seg.active_index) : "—", seg && seg.building ? pill("building", "warn spin") : null));
        }),
      ),
    ),
    h("h3", {}, "Compatibility gate"),
    evalSetNote(evalSet, name),
  );
}

function proposeCard(name, info, state, known, draft, outcome, refresh) {
  const list = h("datalist", { id: "known-encoders" }, [...known].filter((k) => k !== state.active).sort().map((k) => h("option", { value: k })));
  const to = h("input", { class: "migrate-to", list: "known-encoders", placeholder: "name@version", required: true, value: draft.to, "aria-label": "New encoder" });
  to.addEventListener("input", () => { draft.to = to.value; });
  const backfill = h(
    "select",
    { class: "migrate-backfill", "aria-label": "Backfill" },
    h("option", { value: "none" }, "none: old vectors answer through the compatible prefix"),
    h("option", { value: "background", disabled: !info.keep_sources }, `background re-encode${info.keep_sources ? "" : " (needs keep_sources)"}`),
  );
  const force = h("input", { type: "checkbox", class: "migrate-force" });
  const canRollBack = state.history.some((e) => e.kind === "migrate");

  async function propose(event) {
    event.preventDefault();
    const target = to.value.trim();
    if (!target) return;
    const ok = await confirmDialog({
      title: `Switch ${name} to ${target}?`,
      body: [
        h("p", {}, `The server checks that ${target} is compatible with every stored version by its spec, then runs the compatibility gate on the collection's evaluation set. Only if both pass`, force.checked ? " (or with force)" : "", ` do queries use ${target} from now on.`),
        h("p", { class: "muted" }, "Stored vectors are not rewritten; rollback returns to the current encoder."),
      ],
      confirm: force.checked ? "Switch (force)" : "Check and switch",
    });
    if (!ok) return;
    clear(outcome, h("div", { class: "alert info" }, `Checking ${target}…`));
    try {
      const r = await api.post(paths.migrations(name), { to: target, force: force.checked, backfill: backfill.value });
      draft.to = "";
      clear(outcome, migrationOutcome(r));
    } catch (error) {
      clear(outcome, refusal(error));
    }
    refresh();
  }

  async function rollback() {
    const ok = await confirmDialog({
      title: `Roll ${name} back?`,
      body: h("p", {}, "Queries return to the encoder the last migration came from. Items only the newer encoder made stay stored but are not found until you migrate forward again."),
      confirm: "Roll back",
      danger: true,
    });
    if (!ok) return;
    try {
      const r = await api.post(paths.rollback(name), {});
      const lost = Object.entries(r.migration.unsearchable || {});
      clear(
        outcome,
        h("div", { class: "alert ok", dataset: { outcome: "rollback" } }, h("strong", {}, `Rolled back to ${r.active}. `), lost.length ? `Not searchable now: ${lost.map(([v, n]) => `${fmt.int(n)} items of ${v}`).join(", ")}.` : "Every stored item stays searchable."),
      );
    } catch (error) {
      clear(outcome, errorBox(error));
    }
    refresh();
  }

  return h(
    "section",
    { class: "card propose" },
    h("h2", {}, "Propose a migration"),
    h(
      "form",
      { class: "stack", onsubmit: propose },
      list,
      field("New encoder", to, "must declare compatible_with the versions stored here"),
      field("Backfill", backfill),
      h("label", { class: "check" }, force, " Force: switch even when the gate fails or has no evaluation set"),
      h(
        "div",
        { class: "actions" },
        h("button", { type: "submit", class: "button primary migrate" }, "Check and switch…"),
        h("button", { type: "button", class: "button danger-ghost rollback", disabled: !canRollBack, onclick: rollback }, "Roll back…"),
      ),
    ),
    outcome, // the server's answer stays where the user acted, across refreshes
  );
}

function migrationOutcome(r) {
  const m = r.migration;
  return h(
    "div",
    { class: `alert ${m.gate === "passed" ? "ok" : "warn"}`, dataset: { outcome: "migrated" } },
    h("strong", {}, `Now serving ${r.active}. `),
    `Gate ${m.gate}${m.eval_source ? ` (evaluation set: ${m.eval_source})` : ""}.`,
    m.backfill_job ? h("span", {}, " Backfill job ", h("a", { href: "#/jobs" }, m.backfill_job.slice(0, 8)), ".") : null,
    reportTables(m.reports),
  );
}

function refusal(error) {
  if (error.status !== 409) return errorBox(error);
  return h("div", { class: "alert error refusal", role: "alert" }, h("strong", {}, "Refused. "), error.message);
}

function reportTables(reports) {
  const entries = Object.entries(reports || {});
  if (!entries.length) return h("p", { class: "muted" }, "No compatibility report (no evaluation set).");
  return entries.map(([old, r]) =>
    h(
      "div",
      { class: "report", dataset: { old } },
      h("div", { class: "report-head" }, h("span", {}, `${r.new} against ${old}`), pill(r.criterion_met ? "criterion met" : "criterion not met", r.criterion_met ? "ok" : "error"), h("span", { class: "muted" }, `${fmt.int(r.n)} items · compat dims ${r.compat_dims ?? "all"}`)),
      h(
        "table",
        { class: "table compact" },
        h("thead", {}, h("tr", {}, ["query / gallery", "top-1", "mAP"].map((t) => h("th", {}, t)))),
        h(
          "tbody",
          {},
          [["old / old", r.old_old], ["new / old", r.new_old], ["new / new", r.new_new]].map(([label, m]) =>
            h("tr", {}, h("td", {}, label), h("td", {}, m ? m.top1.toFixed(4) : "—"), h("td", {}, m ? m.mAP.toFixed(4) : "—")),
          ),
        ),
      ),
      h("p", { class: "muted" }, `Negative flips ${fmt.pct(r.negative_flips)} (after a backfill ${fmt.pct(r.negative_flips_new_new)}). The criterion: new/old top-1 > old/old top-1.`),
    ),
  );
}

function historyCard(history) {
  const entries = [...history].reverse();
  return h(
    "section",
    { class: "card history" },
    h("h2", {}, "History"),
    entries.length
      ? h(
          "ol",
          { class: "timeline" },
          entries.map((e) =>
            h(
              "li",
              { dataset: { entry: String(e.id), kind: e.kind } },
              h(
                "div",
                { class: "timeline-head" },
                h("span", { class: "entry-id" }, `#${e.id}`),
                pill(e.kind, e.kind === "rollback" ? "warn" : "info"),
                h("code", {}, e.from), " → ", h("code", {}, e.to),
                e.gate ? pill(e.gate, e.gate === "passed" ? "ok" : "warn") : null,
                h("span", { class: "muted when" }, fmt.when(e.at)),
              ),
              h("div", { class: "timeline-body" }, details(e)),
            ),
          ),
        )
      : h("p", { class: "muted" }, "No migrations yet."),
  );
}

function details(e) {
  if (e.kind === "rollback") {
    const lost = Object.entries(e.unsearchable || {});
    return lost.length ? `unsearchable: ${lost.map(([v, n]) => `${fmt.int(n)} × ${v}`).join(", ")}` : "every item searchable";
  }
  const parts = [`backfill ${e.backfill || "none"}`];
  if (e.eval_source) parts.push(`eval: ${e.eval_source}`);
  return h("details", {}, h("summary", {}, parts.join(" · ")), reportTables(e.reports));
}
