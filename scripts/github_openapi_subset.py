#!/usr/bin/env python3
"""Cuts the operations specrun calls out of GitHub's OpenAPI description.

Usage: github_openapi_subset.py API_GITHUB_COM_JSON OUTPUT_JSON SOURCE_LABEL

Reads `generated/api.github.com.json` of the npm package `@octokit/openapi`, keeps only the
operations in OPERATIONS, resolves every `$ref` (so the output is self-contained), drops
annotations that do not constrain anything (descriptions, examples), and writes the result as
a small OpenAPI 3.0 document. Recursive schemas are cut at the point of recursion (replaced
by `{}`) and listed under `info.x-cut-cycles`. Standard library only.
"""

import json
import sys

# (path, method): every GitHub REST operation specrun calls.
OPERATIONS = [
    ("/repos/{owner}/{repo}", "get"),
    ("/repos/{owner}/{repo}/pulls", "get"),
    ("/repos/{owner}/{repo}/pulls", "post"),
    ("/repos/{owner}/{repo}/pulls/{pull_number}", "get"),
    ("/repos/{owner}/{repo}/pulls/{pull_number}", "patch"),
    ("/repos/{owner}/{repo}/issues/{issue_number}/labels", "post"),
]

# Schema keywords that only annotate; dropped to keep the fixture small.
ANNOTATIONS = {"description", "example", "examples", "title", "externalDocs", "deprecated",
               "readOnly", "writeOnly", "x-github", "x-multi-segment"}


class Resolver:
    """Resolves `#/...` references against the whole document, cutting cycles."""

    def __init__(self, doc):
        self.doc = doc
        self.stack = []
        self.cut = set()

    def lookup(self, ref):
        if not ref.startswith("#/"):
            raise SystemExit(f"external $ref not supported: {ref}")
        node = self.doc
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def deref(self, node):
        """`node` with its own `$ref` chain followed (not recursively)."""
        while isinstance(node, dict) and "$ref" in node:
            node = self.lookup(node["$ref"])
        return node

    def schema(self, node):
        """A schema with every reference resolved and annotations dropped."""
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            ref = node["$ref"]
            if ref in self.stack:
                self.cut.add(ref)
                return {}
            self.stack.append(ref)
            try:
                return self.schema(self.lookup(ref))
            finally:
                self.stack.pop()
        out = {}
        for key, value in node.items():
            if key in ANNOTATIONS or key.startswith("x-"):
                continue
            if key == "properties":
                out[key] = {name: self.schema(sub) for name, sub in value.items()}
            elif key in ("items", "additionalProperties", "not"):
                out[key] = self.schema(value)
            elif key in ("anyOf", "oneOf", "allOf"):
                out[key] = [self.schema(sub) for sub in value]
            else:
                out[key] = value
        return out

    def content(self, content):
        """Keeps the JSON media type's schema only."""
        media = content.get("application/json")
        if media is None or "schema" not in media:
            return None
        return {"application/json": {"schema": self.schema(media["schema"])}}

    def operation(self, op, path_params):
        out = {"operationId": op["operationId"], "summary": op.get("summary", "")}
        params = [self.deref(p) for p in path_params + op.get("parameters", [])]
        out["parameters"] = [
            {k: (self.schema(v) if k == "schema" else v)
             for k, v in p.items() if k not in ANNOTATIONS}
            for p in params
        ]
        if "requestBody" in op:
            body = self.deref(op["requestBody"])
            out["requestBody"] = {"required": body.get("required", False),
                                  "content": self.content(body["content"])}
        out["responses"] = {}
        for status, response in op["responses"].items():
            response = self.deref(response)
            entry = {"description": response.get("description", "")}
            content = self.content(response.get("content", {}))
            if content:
                entry["content"] = content
            out["responses"][status] = entry
        return out


def main():
    source, output, label = sys.argv[1:4]
    with open(source, encoding="utf-8") as f:
        doc = json.load(f)
    resolver = Resolver(doc)
    paths = {}
    for path, method in OPERATIONS:
        item = doc["paths"][path]
        paths.setdefault(path, {})[method] = resolver.operation(
            item[method], item.get("parameters", []))
    subset = {
        "openapi": doc["openapi"],
        "info": {
            "title": "GitHub REST API: the operations specrun calls",
            "version": doc["info"]["version"],
            "x-source": label,
            "x-generated-by": "scripts/update-github-openapi.sh",
            "x-cut-cycles": sorted(resolver.cut),
        },
        "paths": paths,
    }
    with open(output, "w", encoding="utf-8") as f:
        json.dump(subset, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
