// A run's page: status, error with its remediation, the phase timeline drawn to scale,
// branch, commit and pull request, token usage, artifacts, the live log, and cancel.
// Refreshed every 2 s until the run is final; the log viewer lives across refreshes.

import { api, artifactPath } from "./api.js";
import { LogView } from "./logview.js";
import { ago, formatBytes, formatDuration, formatTime, h, link, pill, replace } from "./dom.js";

const REFRESH_MS = 2000;
const FINAL = new Set(["succeeded", "no_changes", "needs_clarification", "failed", "cancelled"]);

export function runView(root, runId) {
  let timer = null;
  let stopped = false;
  const logView = new LogView(runId);
  const body = h("div", { class: "run-body" });
  const notice = h("p", { class: "notice", hidden: true, "data-test": "notice" });
  replace(root, h("p", { class: "crumbs" }, h("a", { href: "#/" }, "← Runs")), notice, body, logView.element);

  async function refresh() {
    let run;
    try {
      run = await api.run(runId);
    } catch (error) {
      notice.hidden = false;
      notice.textContent = error.status === 404 ? `No run ${runId}.` : `Could not load the run: ${error.message}`;
      if (error.status !== 404 && !stopped) timer = setTimeout(refresh, REFRESH_MS * 2);
      return;
    }
    if (stopped) return;
    notice.hidden = true;
    render(body, run, { onCancel: () => cancel(run) });
    // The log follows the running phase; with none running, it stays where it is, or
    // starts at the last phase that left a log.
    const started = (run.phases || []).filter((p) => p.started_at);
    const running = started.find((p) => p.status === "running");
    const logged = (run.artifacts || []).filter((a) => a.phase && a.name.endsWith("stdout.log"));
    const fallback = logged[logged.length - 1]?.phase || started[started.length - 1]?.phase;
    // Once the run is over, its last log is the one worth reading (not cleanup's).
    const active = running?.phase || (FINAL.has(run.status) ? fallback : undefined);
    logView.update(started.map((p) => p.phase), active, fallback, run.artifacts);
    if (!FINAL.has(run.status)) timer = setTimeout(refresh, REFRESH_MS);
  }

  async function cancel(run) {
    notice.hidden = false;
    try {
      const answer = await api.cancel(run.run_id);
      notice.textContent = answer.status === "cancelled" ? "Run cancelled." : "Cancel requested: the runner stops the run at its next check.";
    } catch (error) {
      notice.textContent = `Could not cancel: ${error.message}`;
    }
    clearTimeout(timer);
    refresh();
  }

  refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
    logView.stop();
  };
}

function render(body, run, { onCancel }) {
  const inProgress = !FINAL.has(run.status);
  replace(
    body,
    h(
      "div",
      { class: "run-head" },
      h("div", {}, h("h1", { "data-test": "run-id" }, run.run_id), h("p", { class: "muted" }, run.repository)),
      h(
        "div",
        { class: "run-actions" },
        h("span", { "data-test": "run-status" }, pill(run.status)),
        inProgress && h("button", { type: "button", class: "danger", "data-test": "cancel", onclick: onCancel }, "Cancel run"),
      ),
    ),
    run.status_reason && h("p", { class: "reason", "data-test": "status-reason" }, run.status_reason),
    run.error && errorBox(run.error),
    h("div", { class: "grid" }, facts(run), usage(run.usage)),
    timeline(run),
    artifacts(run),
  );
}

function errorBox(error) {
  return h(
    "section",
    { class: "card error-box", "data-test": "error" },
    h("h2", {}, `Error: ${error.code}${error.phase ? ` in ${error.phase}` : ""}`),
    h("p", { "data-test": "error-message" }, error.message),
    error.remediation && h("p", { class: "remedy", "data-test": "remediation" }, h("strong", {}, "What to do: "), error.remediation),
    error.log_excerpt && h("pre", { class: "excerpt" }, error.log_excerpt),
  );
}

/**
 * The repository's web page: the pull request's URL without `/pull/N` when there is one
 * (right for GitHub and GitHub Enterprise), else an http(s) repository URL, else
 * owner/name on GitHub.
 */
function webBase(repository, pullRequestUrl) {
  const fromPull = /^(https?:\/\/.+)\/pull\/\d+$/.exec(pullRequestUrl || "");
  if (fromPull) return fromPull[1];
  if (/^[\w.-]+\/[\w.-]+$/.test(repository)) return `https://github.com/${repository}`;
  if (/^https?:\/\//.test(repository)) return repository.replace(/\.git$/, "").replace(/\/$/, "");
  return null;
}

function facts(run) {
  const base = webBase(run.repository, run.pull_request_url);
  const row = (label, value, test) => [h("dt", {}, label), h("dd", { "data-test": test }, value || h("span", { class: "muted" }, "—"))];
  const branch = run.branch_name && (base ? link(`${base}/tree/${run.branch_name}`, run.branch_name) : h("code", {}, run.branch_name));
  const commit = run.commit_sha && (base ? link(`${base}/commit/${run.commit_sha}`, run.commit_sha.slice(0, 12), { title: run.commit_sha }) : h("code", { title: run.commit_sha }, run.commit_sha.slice(0, 12)));
  const pr = run.pull_request_url && link(run.pull_request_url, run.pull_request_url, { "data-test": "pr-link" });
  return h(
    "section",
    { class: "card" },
    h("h2", {}, "Run"),
    h(
      "dl",
      { class: "facts" },
      row("Repository", base ? link(base, run.repository) : run.repository, "repository"),
      row("Branch", branch, "branch"),
      row("Commit", commit, "commit"),
      row("Pull request", pr, "pull-request"),
      row("Publish", run.publish, "publish"),
      row("Agent", [run.agent?.name, run.agent?.version && ` ${run.agent.version}`].filter(Boolean).join(""), "agent"),
      row("Created", run.created_at && h("span", { title: formatTime(run.created_at) }, ago(run.created_at)), "created"),
      row("Duration", run.started_at && formatDuration(new Date(run.finished_at || Date.now()) - new Date(run.started_at)), "duration"),
      row("Attempt", String(run.attempt ?? 1), "attempt"),
    ),
  );
}

function usage(usage) {
  const content = usage
    ? h(
        "dl",
        { class: "facts" },
        h("dt", {}, "Model requests"), h("dd", {}, String(usage.requests ?? 0)),
        h("dt", {}, "Input tokens"), h("dd", { "data-test": "input-tokens" }, (usage["gen_ai.usage.input_tokens"] ?? 0).toLocaleString()),
        h("dt", {}, "Output tokens"), h("dd", { "data-test": "output-tokens" }, (usage["gen_ai.usage.output_tokens"] ?? 0).toLocaleString()),
        h("dt", {}, "Cost"), h("dd", {}, `$${Number(usage.cost_usd ?? 0).toFixed(4)}`),
        h("dt", {}, "Models"), h("dd", {}, (usage["gen_ai.response.model"] || []).join(", ") || "—"),
      )
    : h("p", { class: "muted" }, "Not known for this run (its agent's model traffic did not go through the gateway).");
  return h("section", { class: "card", "data-test": "usage" }, h("h2", {}, "Token usage"), content);
}

/** Each phase as a bar on one time axis, from the run's start to its end (or now). */
function timeline(run) {
  const phases = (run.phases || []).filter((p) => p.started_at);
  const start = Math.min(...phases.map((p) => Date.parse(p.started_at)), Date.parse(run.started_at || run.created_at));
  const end = Math.max(Date.parse(run.finished_at || "") || Date.now(), ...phases.map((p) => Date.parse(p.finished_at || "") || Date.now()));
  const span = Math.max(end - start, 1);
  const rows = phases.map((p) => {
    const from = Date.parse(p.started_at) - start;
    const until = (Date.parse(p.finished_at || "") || Date.now()) - start;
    const duration = p.duration_ms ?? until - from;
    const left = (100 * from) / span;
    const width = Math.max((100 * (until - from)) / span, 0.5);
    // Set through the CSSOM: the page's policy refuses style attributes.
    const bar = h("span", { class: `tl-bar tl-${p.status}`, title: `${p.status}, ${formatDuration(duration)}` });
    bar.style.left = `${left.toFixed(3)}%`;
    bar.style.width = `${width.toFixed(3)}%`;
    return h(
      "div",
      { class: "tl-row", "data-test": "timeline-row", dataset: { phase: p.phase, status: p.status, durationMs: String(duration) } },
      h("span", { class: "tl-name" }, p.phase.replace(/_/g, " ")),
      h(
        "span",
        { class: "tl-track" },
        bar,
      ),
      h("span", { class: "tl-duration", "data-test": "phase-duration" }, formatDuration(duration), p.status === "running" ? " …" : ""),
    );
  });
  return h(
    "section",
    { class: "card" },
    h("div", { class: "card-head" }, h("h2", {}, "Timeline"), rows.length > 0 && h("span", { class: "muted" }, `total ${formatDuration(end - start)}`)),
    rows.length ? h("div", { class: "timeline", "data-test": "timeline" }, rows) : h("p", { class: "muted" }, "No phase has started yet."),
  );
}

function artifacts(run) {
  const list = run.artifacts || [];
  return h(
    "section",
    { class: "card" },
    h("h2", {}, `Artifacts (${list.length})`),
    list.length
      ? h(
          "table",
          { class: "table artifacts" },
          h("thead", {}, h("tr", {}, h("th", {}, "Phase"), h("th", {}, "File"), h("th", { class: "num" }, "Size"), h("th", {}, ""))),
          h(
            "tbody",
            {},
            list.map((a) => {
              const path = artifactPath(run.run_id, a.key);
              return h(
                "tr",
                { "data-test": "artifact" },
                h("td", {}, a.phase || "run"),
                h("td", {}, h("a", { href: path, target: "_blank", rel: "noopener", "data-test": "artifact-open" }, a.name)),
                h("td", { class: "num" }, formatBytes(a.size)),
                h("td", {}, h("a", { href: path, download: a.name, class: "quiet-link", "data-test": "artifact-download" }, "Download")),
              );
            }),
          ),
        )
      : h("p", { class: "muted" }, "None yet."),
  );
}
