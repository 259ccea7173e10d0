//! What model calls cost, read from the wire: token usage parsed from a model API's answer
//! (a whole JSON body or a server-sent event stream), summed per phase and run, priced from
//! a table the operator may override, and checked against budgets.
//!
//! The answer shapes understood: OpenAI Responses (`usage.input_tokens`,
//! `input_tokens_details.cached_tokens`, `output_tokens_details.reasoning_tokens`, on the
//! body or on `response.completed`'s `response`), OpenAI Chat Completions
//! (`usage.prompt_tokens`, `completion_tokens`, their `_details`), Anthropic Messages
//! (`usage` on the body, on `message_start`'s `message`, and cumulative on
//! `message_delta`), Gemini (`usageMetadata`, cumulative on every streamed chunk). Within
//! one answer a field's largest value counts, which is right for each of them: each
//! reports a field once, or cumulatively.
//!
//! Field names follow the OpenTelemetry GenAI semantic conventions where one exists
//! (`gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`,
//! `gen_ai.usage.cache_read.input_tokens`); reasoning tokens have none yet and are named
//! in the same style.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Tokens of one answer, or summed over many.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    /// All input tokens, cached ones included.
    #[serde(rename = "gen_ai.usage.input_tokens", default)]
    pub input: u64,
    /// Input tokens read from the provider's cache (part of `input`).
    #[serde(rename = "gen_ai.usage.cache_read.input_tokens", default)]
    pub cached_input: u64,
    /// All output tokens, reasoning ones included.
    #[serde(rename = "gen_ai.usage.output_tokens", default)]
    pub output: u64,
    /// Output tokens spent on reasoning (part of `output`), where the API says.
    #[serde(rename = "gen_ai.usage.reasoning.output_tokens", default)]
    pub reasoning: u64,
}

impl Tokens {
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }

    fn add(&mut self, other: &Tokens) {
        self.input = self.input.saturating_add(other.input);
        self.cached_input = self.cached_input.saturating_add(other.cached_input);
        self.output = self.output.saturating_add(other.output);
        self.reasoning = self.reasoning.saturating_add(other.reasoning);
    }

    fn max(&mut self, other: &Tokens) {
        self.input = self.input.max(other.input);
        self.cached_input = self.cached_input.max(other.cached_input);
        self.output = self.output.max(other.output);
        self.reasoning = self.reasoning.max(other.reasoning);
    }
}

/// What one answer reported: its model (when named) and tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnswerUsage {
    pub model: Option<String>,
    pub tokens: Tokens,
    /// Whether any usage was found at all.
    pub reported: bool,
}

impl AnswerUsage {
    /// Folds in the usage one JSON object (a body, or one event's data) carries.
    pub fn add_json(&mut self, value: &Value) {
        if let Some(model) = model_of(value) {
            self.model = Some(model);
        }
        for usage in usage_objects(value) {
            self.tokens.max(&tokens_of(usage));
            self.reported = true;
        }
    }

    /// The usage of a whole (non-streamed) JSON body.
    pub fn from_body(body: &[u8]) -> AnswerUsage {
        let mut usage = AnswerUsage::default();
        if let Ok(value) = serde_json::from_slice::<Value>(body) {
            usage.add_json(&value);
        }
        usage
    }
}

/// The model an object names: a body's `model` (OpenAI, Anthropic), a streamed event's
/// `response.model` or `message.model`, or Gemini's `modelVersion`.
fn model_of(value: &Value) -> Option<String> {
    let candidates = [
        value.get("model"),
        value.get("modelVersion"),
        value.get("response").and_then(|r| r.get("model")),
        value.get("message").and_then(|m| m.get("model")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find_map(Value::as_str)
        .filter(|m| !m.is_empty())
        .map(|m| m.chars().take(128).collect())
}

/// The usage objects an object carries, wherever its API puts them.
fn usage_objects(value: &Value) -> Vec<&Value> {
    [
        value.get("usage"),
        value.get("usageMetadata"),
        value.get("response").and_then(|r| r.get("usage")),
        value.get("message").and_then(|m| m.get("usage")),
    ]
    .into_iter()
    .flatten()
    .filter(|u| u.is_object())
    .collect()
}

fn tokens_of(usage: &Value) -> Tokens {
    let n = |path: &[&str]| {
        path.iter()
            .try_fold(usage, |v, key| v.get(key))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    // Anthropic counts cached input apart from `input_tokens`; the others include it.
    let anthropic_cached =
        n(&["cache_read_input_tokens"]).saturating_add(n(&["cache_creation_input_tokens"]));
    Tokens {
        input: n(&["input_tokens"])
            .saturating_add(anthropic_cached)
            .max(n(&["prompt_tokens"]))
            .max(n(&["promptTokenCount"])),
        cached_input: n(&["input_tokens_details", "cached_tokens"])
            .max(n(&["prompt_tokens_details", "cached_tokens"]))
            .max(n(&["cache_read_input_tokens"]))
            .max(n(&["cachedContentTokenCount"])),
        output: n(&["output_tokens"])
            .max(n(&["completion_tokens"]))
            .max(n(&["candidatesTokenCount"]).saturating_add(n(&["thoughtsTokenCount"]))),
        reasoning: n(&["output_tokens_details", "reasoning_tokens"])
            .max(n(&["completion_tokens_details", "reasoning_tokens"]))
            .max(n(&["thoughtsTokenCount"])),
    }
}

/// Reads a server-sent event stream as it passes, a chunk at a time, collecting the
/// usage its events' data carry. Bounded: a line longer than [`SseUsage::MAX_LINE`] is
/// passed over.
#[derive(Debug, Default)]
pub struct SseUsage {
    line: Vec<u8>,
    overlong: bool,
    data: Vec<u8>,
    usage: AnswerUsage,
}

impl SseUsage {
    /// Longest `data:` line read (usage events are small; content deltas may be large
    /// and carry no usage).
    pub const MAX_LINE: usize = 1024 * 1024;

    pub fn feed(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' {
                let line = std::mem::take(&mut self.line);
                if !std::mem::take(&mut self.overlong) {
                    self.line_done(&line);
                }
            } else if self.line.len() < Self::MAX_LINE {
                self.line.push(byte);
            } else {
                self.overlong = true;
                self.line.clear();
            }
        }
    }

    fn line_done(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.dispatch();
        } else if let Some(data) = line.strip_prefix(b"data:") {
            let data = data.strip_prefix(b" ").unwrap_or(data);
            if !self.data.is_empty() {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(data);
        }
    }

    fn dispatch(&mut self) {
        let data = std::mem::take(&mut self.data);
        if let Ok(value) = serde_json::from_slice::<Value>(&data) {
            self.usage.add_json(&value);
        }
    }

    /// The usage of the stream so far (an event not yet ended by a blank line counts).
    pub fn finish(mut self) -> AnswerUsage {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line);
        }
        self.dispatch();
        self.usage
    }
}

/// USD per million tokens of one model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    /// Cached input; the input price when not given.
    #[serde(default)]
    pub cached_input: Option<f64>,
    pub output: f64,
}

/// Prices by model name; a name ending in `*` is a prefix. The longest match wins.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PriceTable(pub BTreeMap<String, Price>);

impl PriceTable {
    /// The built-in table: list prices (USD per million tokens) of the models the
    /// built-in agents use by default, as published by their vendors in 2026. An operator
    /// overrides or extends it (`SPECRUN_MODEL_PRICES`).
    pub fn builtin() -> PriceTable {
        let entries: [(&str, f64, f64, f64); 6] = [
            ("gpt-5*", 1.25, 0.125, 10.0),
            ("gpt-4.1*", 2.0, 0.5, 8.0),
            ("claude-sonnet-4*", 3.0, 0.3, 15.0),
            ("claude-opus-4*", 15.0, 1.5, 75.0),
            ("claude-haiku-4*", 1.0, 0.1, 5.0),
            ("gemini-2.5-pro*", 1.25, 0.31, 10.0),
        ];
        PriceTable(
            entries
                .into_iter()
                .map(|(name, input, cached, output)| {
                    (
                        name.to_owned(),
                        Price {
                            input,
                            cached_input: Some(cached),
                            output,
                        },
                    )
                })
                .collect(),
        )
    }

    /// This table with `other`'s entries added over it.
    pub fn overridden_by(mut self, other: PriceTable) -> PriceTable {
        self.0.extend(other.0);
        self
    }

    pub fn price(&self, model: &str) -> Option<Price> {
        self.0
            .iter()
            .filter(|(name, _)| match name.strip_suffix('*') {
                Some(prefix) => model.starts_with(prefix),
                None => model == name.as_str(),
            })
            .max_by_key(|(name, _)| name.len())
            .map(|(_, price)| *price)
    }

    /// What `tokens` of `model` cost; `None` for a model the table does not price.
    pub fn cost(&self, model: &str, tokens: &Tokens) -> Option<f64> {
        let price = self.price(model)?;
        let cached = tokens.cached_input.min(tokens.input);
        let fresh = tokens.input - cached;
        let per_token = |per_million: f64| per_million / 1_000_000.0;
        Some(
            fresh as f64 * per_token(price.input)
                + cached as f64 * per_token(price.cached_input.unwrap_or(price.input))
                + tokens.output as f64 * per_token(price.output),
        )
    }
}

/// Model calls summed over a phase or a run (`usage` in phase JSON and run.json).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Model requests the gateway forwarded.
    #[serde(default)]
    pub requests: u64,
    #[serde(flatten)]
    pub tokens: Tokens,
    /// What the tokens cost by the price table; models it does not price count nothing
    /// and are listed in `unpriced_models`.
    #[serde(default)]
    pub cost_usd: f64,
    /// The models that answered (`gen_ai.response.model`), each once.
    #[serde(rename = "gen_ai.response.model", default)]
    pub models: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unpriced_models: Vec<String>,
}

// Costs are sums of finite products, never NaN.
impl Eq for Usage {}

impl Usage {
    /// Adds one forwarded request and what its answer reported.
    pub fn add_answer(&mut self, answer: &AnswerUsage, prices: &PriceTable) {
        self.requests = self.requests.saturating_add(1);
        self.tokens.add(&answer.tokens);
        let Some(model) = &answer.model else {
            return;
        };
        if !self.models.contains(model) {
            self.models.push(model.clone());
        }
        match prices.cost(model, &answer.tokens) {
            Some(cost) => self.cost_usd += cost,
            None if answer.tokens.total() > 0 && !self.unpriced_models.contains(model) => {
                self.unpriced_models.push(model.clone());
            }
            None => {}
        }
    }

    /// The sum of two usages.
    pub fn plus(&self, other: &Usage) -> Usage {
        let mut sum = self.clone();
        sum.requests = sum.requests.saturating_add(other.requests);
        sum.tokens.add(&other.tokens);
        sum.cost_usd += other.cost_usd;
        for model in &other.models {
            if !sum.models.contains(model) {
                sum.models.push(model.clone());
            }
        }
        for model in &other.unpriced_models {
            if !sum.unpriced_models.contains(model) {
                sum.unpriced_models.push(model.clone());
            }
        }
        sum
    }

    /// One line for people: `2 requests, 1200 input (0 cached) / 84 output tokens, $0.0123`.
    pub fn headline(&self) -> String {
        format!(
            "{} model request(s), {} input ({} cached) / {} output tokens, ${:.4}",
            self.requests,
            self.tokens.input,
            self.tokens.cached_input,
            self.tokens.output,
            self.cost_usd
        )
    }
}

/// Maxima of one scope (a phase or the run); `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Input plus output tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u64>,
}

/// Budgets for a run: maxima per run and per agent phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    #[serde(default)]
    pub run: Limits,
    #[serde(default)]
    pub phase: Limits,
}

/// A request asked for more than the operator allows.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("budget {scope}.{name} = {asked} is above the operator's maximum of {allowed}; a request may only lower a budget")]
pub struct BudgetRaised {
    pub scope: &'static str,
    pub name: &'static str,
    pub asked: String,
    pub allowed: String,
}

/// A budget that is spent: which one, the limit and what was used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the {scope} budget {name} is spent: used {used} of {limit}")]
pub struct BudgetSpent {
    pub scope: &'static str,
    pub name: &'static str,
    pub limit: String,
    pub used: String,
}

fn lower<T: PartialOrd + Copy + ToString>(
    scope: &'static str,
    name: &'static str,
    operator: Option<T>,
    asked: Option<T>,
) -> Result<Option<T>, BudgetRaised> {
    match (operator, asked) {
        (Some(max), Some(asked)) if asked > max => Err(BudgetRaised {
            scope,
            name,
            asked: asked.to_string(),
            allowed: max.to_string(),
        }),
        (_, Some(asked)) => Ok(Some(asked)),
        (max, None) => Ok(max),
    }
}

impl Limits {
    fn lowered(&self, scope: &'static str, asked: &Limits) -> Result<Limits, BudgetRaised> {
        Ok(Limits {
            max_tokens: lower(scope, "max_tokens", self.max_tokens, asked.max_tokens)?,
            max_usd: lower(scope, "max_usd", self.max_usd, asked.max_usd)?,
            max_requests: lower(scope, "max_requests", self.max_requests, asked.max_requests)?,
        })
    }

    /// The tighter of two limits, field by field.
    pub fn tighter(&self, other: &Limits) -> Limits {
        fn min<T: PartialOrd>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(if b < a { b } else { a }),
                (a, None) => a,
                (None, b) => b,
            }
        }
        Limits {
            max_tokens: min(self.max_tokens, other.max_tokens),
            max_usd: min(self.max_usd, other.max_usd),
            max_requests: min(self.max_requests, other.max_requests),
        }
    }

    /// The first limit `used` has reached, if any: no further call is allowed.
    pub fn spent(&self, scope: &'static str, used: &Usage) -> Option<BudgetSpent> {
        if let Some(max) = self.max_requests.filter(|max| used.requests >= *max) {
            return Some(BudgetSpent {
                scope,
                name: "max_requests",
                limit: max.to_string(),
                used: used.requests.to_string(),
            });
        }
        if let Some(max) = self.max_tokens.filter(|max| used.tokens.total() >= *max) {
            return Some(BudgetSpent {
                scope,
                name: "max_tokens",
                limit: max.to_string(),
                used: used.tokens.total().to_string(),
            });
        }
        if let Some(max) = self.max_usd.filter(|max| used.cost_usd >= *max) {
            return Some(BudgetSpent {
                scope,
                name: "max_usd",
                limit: format!("{max}"),
                used: format!("{:.6}", used.cost_usd),
            });
        }
        None
    }
}

impl Budget {
    /// The operator's budget lowered by a request's; refuses any raise.
    pub fn lowered_by(&self, asked: &Budget) -> Result<Budget, BudgetRaised> {
        Ok(Budget {
            run: self.run.lowered("run", &asked.run)?,
            phase: self.phase.lowered("phase", &asked.phase)?,
        })
    }

    /// The tighter of two budgets (the runner's and an agent profile's).
    pub fn tighter(&self, other: &Budget) -> Budget {
        Budget {
            run: self.run.tighter(&other.run),
            phase: self.phase.tighter(&other.phase),
        }
    }

    /// The first spent budget, phase before run.
    pub fn spent(&self, phase: &Usage, run: &Usage) -> Option<BudgetSpent> {
        self.phase
            .spent("phase", phase)
            .or_else(|| self.run.spent("run", run))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sse(events: &[Value]) -> String {
        events
            .iter()
            .map(|e| format!("event: x\ndata: {e}\n\n"))
            .collect()
    }

    fn streamed(text: &str, chunk: usize) -> AnswerUsage {
        let mut reader = SseUsage::default();
        for piece in text.as_bytes().chunks(chunk) {
            reader.feed(piece);
        }
        reader.finish()
    }

    #[test]
    fn responses_usage_is_read_from_the_completed_event_in_any_chunking() {
        let text = sse(&[
            json!({"type": "response.created", "response": {"id": "r", "model": "gpt-test"}}),
            json!({"type": "response.output_text.delta", "delta": "hi"}),
            json!({"type": "response.completed", "response": {"model": "gpt-test", "usage": {
                "input_tokens": 120, "input_tokens_details": {"cached_tokens": 20},
                "output_tokens": 42, "output_tokens_details": {"reasoning_tokens": 7}}}}),
        ]);
        for chunk in [1, 7, 4096] {
            let usage = streamed(&text, chunk);
            assert_eq!(usage.model.as_deref(), Some("gpt-test"));
            assert_eq!(
                usage.tokens,
                Tokens {
                    input: 120,
                    cached_input: 20,
                    output: 42,
                    reasoning: 7
                },
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn anthropic_stream_takes_input_from_the_start_and_output_from_the_last_delta() {
        let text = sse(&[
            json!({"type": "message_start", "message": {"model": "claude-x", "usage": {
                "input_tokens": 300, "cache_read_input_tokens": 100, "output_tokens": 1}}}),
            json!({"type": "content_block_delta", "delta": {"text": "x"}}),
            json!({"type": "message_delta", "usage": {"output_tokens": 42}}),
        ]);
        let usage = streamed(&text, 5);
        assert_eq!(usage.model.as_deref(), Some("claude-x"));
        assert_eq!(
            (
                usage.tokens.input,
                usage.tokens.cached_input,
                usage.tokens.output
            ),
            (400, 100, 42)
        );
    }

    #[test]
    fn chat_completions_and_gemini_bodies_are_read() {
        let chat = AnswerUsage::from_body(
            json!({"model": "gpt-4.1", "usage": {"prompt_tokens": 10, "completion_tokens": 5,
                "prompt_tokens_details": {"cached_tokens": 4},
                "completion_tokens_details": {"reasoning_tokens": 2}}})
            .to_string()
            .as_bytes(),
        );
        assert_eq!(
            chat.tokens,
            Tokens {
                input: 10,
                cached_input: 4,
                output: 5,
                reasoning: 2
            }
        );
        let gemini = streamed(
            &format!(
                "data: {}\r\n\r\ndata: {}\r\n\r\n",
                json!({"modelVersion": "gemini-2.5-pro", "usageMetadata": {"promptTokenCount": 50, "candidatesTokenCount": 3}}),
                json!({"modelVersion": "gemini-2.5-pro", "usageMetadata": {"promptTokenCount": 50, "candidatesTokenCount": 9, "thoughtsTokenCount": 4, "cachedContentTokenCount": 8}}),
            ),
            3,
        );
        assert_eq!(gemini.model.as_deref(), Some("gemini-2.5-pro"));
        assert_eq!(
            gemini.tokens,
            Tokens {
                input: 50,
                cached_input: 8,
                output: 13,
                reasoning: 4
            }
        );
    }

    #[test]
    fn an_answer_without_usage_reports_none() {
        assert!(!AnswerUsage::from_body(b"{\"input_tokens\": 5}").reported);
        assert!(!AnswerUsage::from_body(b"not json").reported);
        assert!(!streamed("data: [DONE]\n\n", 2).reported);
    }

    #[test]
    fn prices_match_the_longest_name_and_cached_input_is_cheaper() {
        let table = PriceTable::builtin().overridden_by(PriceTable(
            [(
                "gpt-5-mini*".to_owned(),
                Price {
                    input: 0.25,
                    cached_input: None,
                    output: 2.0,
                },
            )]
            .into_iter()
            .collect(),
        ));
        let tokens = Tokens {
            input: 1_000_000,
            cached_input: 0,
            output: 1_000_000,
            reasoning: 0,
        };
        assert_eq!(table.cost("gpt-5-mini-2026", &tokens), Some(2.25));
        assert_eq!(table.cost("gpt-5", &tokens), Some(11.25));
        let cached = Tokens {
            cached_input: 1_000_000,
            ..tokens
        };
        assert_eq!(table.cost("gpt-5", &cached), Some(10.125));
        assert_eq!(table.cost("unknown-model", &tokens), None);
    }

    #[test]
    fn usage_sums_answers_and_lists_unpriced_models() {
        let prices = PriceTable::builtin();
        let mut usage = Usage::default();
        let answer = |model: &str| AnswerUsage {
            model: Some(model.to_owned()),
            tokens: Tokens {
                input: 1000,
                output: 100,
                ..Tokens::default()
            },
            reported: true,
        };
        usage.add_answer(&answer("gpt-5"), &prices);
        usage.add_answer(&answer("mystery"), &prices);
        assert_eq!(usage.requests, 2);
        assert_eq!(usage.tokens.total(), 2200);
        assert_eq!(usage.models, ["gpt-5", "mystery"]);
        assert_eq!(usage.unpriced_models, ["mystery"]);
        let json = serde_json::to_value(&usage).unwrap_or_default();
        assert_eq!(json["gen_ai.usage.input_tokens"], 2000);
        assert_eq!(json["gen_ai.response.model"], json!(["gpt-5", "mystery"]));
        let back: Usage = serde_json::from_value(json).unwrap_or_default();
        assert_eq!(back, usage);
    }

    #[test]
    fn a_request_may_lower_a_budget_but_not_raise_it() {
        let operator = Budget {
            run: Limits {
                max_tokens: Some(1000),
                max_usd: Some(1.0),
                max_requests: None,
            },
            phase: Limits::default(),
        };
        let lowered = operator.lowered_by(&Budget {
            run: Limits {
                max_tokens: Some(500),
                ..Limits::default()
            },
            phase: Limits {
                max_requests: Some(3),
                ..Limits::default()
            },
        });
        assert_eq!(
            lowered.map(|b| (b.run.max_tokens, b.run.max_usd, b.phase.max_requests)),
            Ok((Some(500), Some(1.0), Some(3)))
        );
        let raised = operator
            .lowered_by(&Budget {
                run: Limits {
                    max_usd: Some(5.0),
                    ..Limits::default()
                },
                ..Budget::default()
            })
            .map_err(|e| e.to_string());
        assert_eq!(
            raised,
            Err("budget run.max_usd = 5 is above the operator's maximum of 1; a request may only lower a budget".to_owned())
        );
    }

    #[test]
    fn a_spent_budget_names_itself_and_its_figures() {
        let budget = Budget {
            run: Limits {
                max_tokens: Some(100),
                ..Limits::default()
            },
            phase: Limits {
                max_requests: Some(5),
                ..Limits::default()
            },
        };
        let mut used = Usage {
            requests: 1,
            ..Usage::default()
        };
        assert_eq!(budget.spent(&used, &used), None);
        used.tokens.input = 150;
        let spent = budget.spent(&used, &used).map(|s| s.to_string());
        assert_eq!(
            spent.as_deref(),
            Some("the run budget max_tokens is spent: used 150 of 100")
        );
    }
}
