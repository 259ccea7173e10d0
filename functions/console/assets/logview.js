// The log viewer: reads a phase's log through the log-tail endpoint from the offset it
// has reached, while the phase writes (Specrun-Log-Writing: true), and stops once the
// phase has ended and the last bytes are in. Bytes are decoded as a stream, so a UTF-8
// character split between two reads comes out whole. Only the last MAX_LINES lines stay
// on the page: a chatty agent cannot grow the page without bound.

import { artifactPath, tailLog } from "./api.js";
import { h } from "./dom.js";

const MAX_LINES = 5000;
const BUSY_POLL_MS = 300;
const IDLE_POLL_MS = 1000;

export class LogView {
  constructor(runId) {
    this.runId = runId;
    this.generation = 0;
    this.phase = null;
    this.stream = "stdout";
    this.chosen = false;
    this.phaseSelect = h("select", { "aria-label": "Phase", "data-test": "log-phase", onchange: () => this.choose() });
    this.streamSelect = h(
      "select",
      { "aria-label": "Stream", "data-test": "log-stream", onchange: () => this.choose() },
      h("option", { value: "stdout" }, "stdout"),
      h("option", { value: "stderr" }, "stderr"),
    );
    this.state = h("span", { class: "log-state muted", "data-test": "log-state" });
    this.pre = h("pre", { class: "log", "data-test": "log", tabindex: "0" });
    this.element = h(
      "section",
      { class: "card" },
      h("div", { class: "card-head" }, h("h2", {}, "Log"), h("div", { class: "log-controls" }, this.phaseSelect, this.streamSelect, this.state)),
      this.pre,
    );
  }

  /**
   * Offers `phases` (names) in the selector; follows `active` (the running phase) unless
   * the user chose one, else stays on its phase, else shows `fallback`.
   */
  update(phases, active, fallback, artifacts) {
    this.artifacts = artifacts;
    const known = [...this.phaseSelect.options].map((o) => o.value).join(",");
    if (known !== phases.join(",")) {
      const current = this.phaseSelect.value;
      this.phaseSelect.replaceChildren(...phases.map((p) => h("option", { value: p }, p.replace(/_/g, " "))));
      if (phases.includes(current)) this.phaseSelect.value = current;
    }
    this.phaseSelect.hidden = phases.length === 0;
    if (!phases.length) this.setState("waiting for the first phase", "waiting");
    const target = this.chosen ? this.phase : active || this.phase || fallback;
    if (target && target !== this.phase) {
      this.phaseSelect.value = target;
      this.follow(target, this.stream);
    }
  }

  choose() {
    this.chosen = true;
    this.follow(this.phaseSelect.value, this.streamSelect.value);
  }

  stop() {
    this.generation += 1;
  }

  async follow(phase, stream) {
    const generation = ++this.generation;
    this.phase = phase;
    this.stream = stream;
    this.lines = [];
    this.partial = "";
    this.pre.textContent = "";
    let decoder = new TextDecoder("utf-8");
    let offset = 0;
    this.setState("reading…", "reading");
    while (generation === this.generation) {
      let read;
      try {
        read = await tailLog(this.runId, phase, stream, offset);
      } catch {
        read = undefined;
      }
      if (generation !== this.generation) return;
      if (read === null) return this.showFinal(phase, stream, generation);
      if (read === undefined) {
        this.setState("connection lost; retrying", "error");
        await sleep(IDLE_POLL_MS * 2);
        continue;
      }
      if (read.restart) {
        // The stored log is shorter than what was shown (a new attempt): start over.
        offset = 0;
        decoder = new TextDecoder("utf-8");
        this.lines = [];
        this.partial = "";
        continue;
      }
      if (read.bytes.length) this.add(decoder.decode(read.bytes, { stream: true }));
      offset = read.next;
      if (!read.writing && read.bytes.length === 0) {
        this.add(decoder.decode());
        this.setState("phase ended: complete log", "ended");
        return;
      }
      this.setState(read.writing ? "following live" : "reading…", read.writing ? "live" : "reading");
      await sleep(read.bytes.length ? BUSY_POLL_MS : IDLE_POLL_MS);
    }
  }

  /** Without the log-tail endpoint: the phase's final log artifact, once it is stored. */
  async showFinal(phase, stream, generation) {
    const artifact = (this.artifacts || []).find((a) => a.phase === phase && a.name.endsWith(`${stream}.log`));
    if (!artifact) {
      this.setState("no log yet (live logs need the log-tail endpoint)", "ended");
      return;
    }
    const response = await fetch(artifactPath(this.runId, artifact.key), { credentials: "same-origin" });
    if (generation !== this.generation) return;
    this.add(await response.text());
    this.setState("final log artifact", "ended");
  }

  add(text) {
    if (!text) return;
    const atBottom = this.pre.scrollHeight - this.pre.scrollTop - this.pre.clientHeight < 40;
    const pieces = (this.partial + text).split("\n");
    this.partial = pieces.pop();
    this.lines.push(...pieces);
    if (this.lines.length > MAX_LINES) this.lines.splice(0, this.lines.length - MAX_LINES);
    this.pre.textContent = this.lines.join("\n") + (this.lines.length ? "\n" : "") + this.partial;
    this.pre.dataset.lines = String(this.lines.length + (this.partial ? 1 : 0));
    if (atBottom) this.pre.scrollTop = this.pre.scrollHeight;
  }

  setState(text, kind) {
    this.state.textContent = text;
    this.state.dataset.state = kind;
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
