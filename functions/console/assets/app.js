// The console's router: #/ (runs), #/runs/{id} (a run), #/new (submit). Each view
// returns what stops its timers when another view takes over.

import { api } from "./api.js";
import { listView } from "./list.js";
import { runView } from "./run.js";
import { submitView } from "./submit.js";

const root = document.getElementById("view");
let dispose = null;

function route() {
  if (dispose) dispose();
  dispose = null;
  const hash = window.location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const run = path.match(/^\/runs\/([^/]+)$/);
  let nav = "runs";
  if (run) {
    dispose = runView(root, decodeURIComponent(run[1]));
  } else if (path === "/new") {
    nav = "new";
    submitView(root);
  } else {
    dispose = listView(root, params);
  }
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("current", link.dataset.nav === nav);
  }
  window.scrollTo(0, 0);
}

document.getElementById("logout").addEventListener("click", async () => {
  await api.logout().catch(() => {});
  window.location.assign("/");
});
window.addEventListener("hashchange", route);
route();
