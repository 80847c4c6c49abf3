// The console's shell: hash routes (#/page/argument), the navigation, and the API-key prompt.

import { forgetKey, hasKey, onKeyChange, setKeyPrompt } from "./api.js";
import { clear, h } from "./dom.js";
import { collectionsPage } from "./collections.js";
import { jobsPage } from "./jobs.js";
import { searchPage } from "./search.js";
import { upgradesPage } from "./upgrades.js";

const PAGES = {
  collections: collectionsPage,
  search: searchPage,
  jobs: jobsPage,
  upgrades: upgradesPage,
};

const main = document.getElementById("page");
let stopCurrent = null; // a page returns a function that stops its timers when it is left

// #/search/<collection> -> {page: "search", arg: "<collection>"}
export function currentRoute() {
  const [page, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  return { page: PAGES[page] ? page : "collections", arg: rest.length ? decodeURIComponent(rest.join("/")) : "" };
}

export function go(page, arg = "") {
  const hash = `#/${page}${arg ? `/${encodeURIComponent(arg)}` : ""}`;
  if (location.hash === hash) route();
  else location.hash = hash;
}

let generation = 0; // a page that finishes loading after the user moved on is stopped at once

async function route() {
  if (stopCurrent) stopCurrent();
  stopCurrent = null;
  const mine = ++generation;
  const { page, arg } = currentRoute();
  document.querySelectorAll(".tabs a").forEach((a) => a.classList.toggle("active", a.dataset.page === page));
  const host = h("div", { class: "page", dataset: { page } });
  clear(main, host);
  const stop = (await PAGES[page](host, arg, go)) || null;
  if (mine === generation) stopCurrent = stop;
  else if (stop) stop();
}

// --- the API key ---------------------------------------------------------------------------------
const dialog = document.getElementById("key-dialog");
const form = document.getElementById("key-form");
const input = document.getElementById("key-input");
const message = document.getElementById("key-message");
let resolveKey = null;

setKeyPrompt(
  (refused) =>
    new Promise((resolve) => {
      message.textContent = refused ? "That key was refused. Enter a valid API key." : "This server needs an API key.";
      message.classList.toggle("error-text", refused);
      input.value = "";
      resolveKey = resolve;
      if (!dialog.open) dialog.showModal();
      input.focus();
    }),
);

form.addEventListener("submit", (event) => {
  event.preventDefault(); // never a form submission: the key must not reach a URL
  const key = input.value.trim();
  if (!key || !resolveKey) return;
  input.value = "";
  dialog.close();
  const resolve = resolveKey;
  resolveKey = null;
  resolve(key);
});
dialog.addEventListener("cancel", (event) => event.preventDefault()); // nothing works without a key

function renderKeyStatus() {
  const host = document.getElementById("key-status");
  if (hasKey()) {
    clear(
      host,
      h("span", { class: "pill ok" }, "key set"),
      h("button", { type: "button", class: "button ghost small", onclick: () => { forgetKey(); route(); } }, "Forget key"),
    );
  } else {
    clear(host, h("span", { class: "pill muted" }, "no key"));
  }
}
onKeyChange(renderKeyStatus);
renderKeyStatus();

window.addEventListener("hashchange", route);
route();
