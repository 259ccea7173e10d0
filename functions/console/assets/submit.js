// The submit form: posts the request as the API takes it and shows the API's own
// validation message beside the field it names (form-level when it names none).

import { api } from "./api.js";
import { h, replace } from "./dom.js";

const FIELDS = [
  { name: "repository", wide: true, label: "Repository", hint: "owner/name, or an https URL of a repository on an allowed host", input: () => h("input", { type: "text", autocomplete: "off", spellcheck: "false" }) },
  { name: "specify_text", wide: true, label: "Specification", hint: "what to build, in plain words: the text given to /specify", input: () => h("textarea", { rows: "7" }) },
  {
    name: "publish",
    label: "Publish",
    input: () => h("select", {}, h("option", { value: "pr" }, "pull request"), h("option", { value: "branch" }, "branch only"), h("option", { value: "none" }, "nothing (dry run)")),
  },
  { name: "agent", label: "Agent", hint: "empty: the deployment's default agent", input: () => h("input", { type: "text", autocomplete: "off" }) },
  { name: "base_branch", label: "Base branch", hint: "empty: the repository's default branch", input: () => h("input", { type: "text", autocomplete: "off" }) },
  { name: "branch_name", label: "Branch name", hint: "empty: a name made from the run", input: () => h("input", { type: "text", autocomplete: "off" }) },
  { name: "labels", label: "Labels", hint: "comma-separated, for the pull request", input: () => h("input", { type: "text", autocomplete: "off" }) },
];

export function submitView(root) {
  const inputs = {};
  const errors = {};
  const formError = h("p", { class: "field-error form-error wide", hidden: true, "data-error-for": "_form" });
  const button = h("button", { type: "submit", class: "primary" }, "Submit run");
  const form = h(
    "form",
    { class: "card submit-form", novalidate: true, onsubmit: (event) => send(event) },
    FIELDS.map((field) => {
      const input = field.input();
      input.id = `field-${field.name}`;
      input.name = field.name;
      inputs[field.name] = input;
      errors[field.name] = h("p", { class: "field-error", hidden: true, id: `error-${field.name}`, "data-error-for": field.name });
      input.setAttribute("aria-describedby", `error-${field.name}`);
      return h(
        "div",
        { class: field.wide ? "field wide" : "field" },
        h("label", { for: input.id }, field.label),
        input,
        field.hint && h("p", { class: "hint" }, field.hint),
        errors[field.name],
      );
    }),
    formError,
    h("div", { class: "form-actions wide" }, button, h("a", { href: "#/" }, "Back to runs")),
  );
  replace(root, h("h1", {}, "New run"), form);
  inputs.repository.focus();

  function clearErrors() {
    for (const [name, element] of Object.entries(errors)) {
      element.hidden = true;
      element.textContent = "";
      inputs[name].removeAttribute("aria-invalid");
    }
    formError.hidden = true;
  }

  async function send(event) {
    event.preventDefault();
    clearErrors();
    const request = {};
    for (const [name, input] of Object.entries(inputs)) {
      const value = input.value.trim();
      if (name === "labels") {
        const labels = value.split(",").map((l) => l.trim()).filter(Boolean);
        if (labels.length) request.labels = labels;
      } else if (value || name === "repository" || name === "specify_text") {
        request[name] = name === "specify_text" ? input.value : value;
      }
    }
    button.disabled = true;
    try {
      const answer = await api.submit(request);
      window.location.hash = `#/runs/${encodeURIComponent(answer.run_id)}`;
    } catch (error) {
      // The API's field may be nested (labels[0], budget.max_tokens): its first part.
      const field = (error.field || "").split(/[.[]/)[0];
      const target = errors[field];
      if (target) {
        target.textContent = error.message;
        target.hidden = false;
        inputs[field].setAttribute("aria-invalid", "true");
        inputs[field].focus();
      } else {
        formError.textContent = error.message;
        formError.hidden = false;
      }
    } finally {
      button.disabled = false;
    }
  }
}
