// The run list: newest first, filtered by status and repository (by the API, so a
// filter looks past the first page), a page at a time; the first page refreshes itself.

import { api } from "./api.js";
import { ago, formatTime, h, pill, replace } from "./dom.js";

const PAGE = 25;
const REFRESH_MS = 5000;
const STATUSES = ["queued", "running", "succeeded", "no_changes", "needs_clarification", "failed", "cancelled"];

export function listView(root, params) {
  const status = params.get("status") || "";
  const repository = params.get("repository") || "";
  const cursors = [""];
  let timer = null;
  let stopped = false;

  const statusSelect = h(
    "select",
    { id: "filter-status", name: "status" },
    h("option", { value: "" }, "any status"),
    STATUSES.map((s) => h("option", { value: s, selected: s === status }, s.replace(/_/g, " "))),
  );
  const repositoryInput = h("input", { id: "filter-repository", name: "repository", type: "search", placeholder: "any repository", value: repository });
  const filters = h(
    "form",
    { class: "filters", onsubmit: (event) => {
      event.preventDefault();
      const query = new URLSearchParams();
      if (statusSelect.value) query.set("status", statusSelect.value);
      if (repositoryInput.value.trim()) query.set("repository", repositoryInput.value.trim());
      window.location.hash = `#/?${query}`;
    } },
    h("label", { for: "filter-status" }, "Status"), statusSelect,
    h("label", { for: "filter-repository" }, "Repository"), repositoryInput,
    h("button", { type: "submit" }, "Filter"),
  );
  statusSelect.addEventListener("change", () => filters.requestSubmit());
  const table = h("div", { class: "table-wrap" });
  const pager = h("div", { class: "pager" });
  replace(root, h("div", { class: "page-head" }, h("h1", {}, "Runs"), h("a", { class: "button primary", href: "#/new" }, "New run")), filters, table, pager);

  async function load() {
    clearTimeout(timer);
    const cursor = cursors[cursors.length - 1];
    const query = { limit: String(PAGE) };
    if (cursor) query.cursor = cursor;
    if (status) query.status = status;
    if (repository) query.repository = repository;
    let page;
    try {
      page = await api.listRuns(query);
    } catch (error) {
      replace(table, h("p", { class: "notice" }, `Could not list runs: ${error.message}`));
      return;
    }
    if (stopped) return;
    draw(page);
    if (cursors.length === 1) timer = setTimeout(load, REFRESH_MS);
  }

  function draw(page) {
    const runs = page.runs || [];
    replace(
      table,
      runs.length
        ? h(
            "table",
            { class: "table runs", "data-test": "runs" },
            h("thead", {}, h("tr", {}, ["Status", "Run", "Repository", "Branch", "Created", "Note"].map((t) => h("th", {}, t)))),
            h(
              "tbody",
              {},
              runs.map((run) =>
                h(
                  "tr",
                  { "data-test": "run-row", dataset: { runId: run.run_id } },
                  h("td", {}, pill(run.status)),
                  h("td", { class: "nowrap" }, h("a", { href: `#/runs/${encodeURIComponent(run.run_id)}`, class: "mono" }, run.run_id)),
                  h("td", { class: "wrap" }, run.repository),
                  h("td", { class: "mono" }, run.branch_name || ""),
                  h("td", { title: formatTime(run.created_at) }, ago(run.created_at)),
                  h("td", { class: "muted wrap" }, run.status_reason || ""),
                ),
              ),
            ),
          )
        : h("p", { class: "empty" }, status || repository ? "No run matches these filters." : "No runs yet. Submit one with New run."),
    );
    replace(
      pager,
      h("button", { type: "button", disabled: cursors.length === 1, onclick: () => { cursors.pop(); load(); } }, "← Newer"),
      h("span", { class: "muted" }, `page ${cursors.length}`),
      h("button", { type: "button", disabled: !page.next_cursor, onclick: () => { cursors.push(page.next_cursor); load(); } }, "Older →"),
    );
  }

  load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
