//! Helpers that start and stop the real services the end-to-end tests run against: a git
//! smart-HTTP server ([`git_http`]) and a pipeline harness on a real Docker engine with
//! the real job image ([`harness`]).

pub mod anthropic_server;
pub mod browser;
pub mod celery;
pub mod emulator;
pub mod forge;
pub mod gemini_server;
pub mod git_http;
pub mod harness;
pub mod http_thread;
pub mod model_server;
pub mod outage;
pub mod postgres;
pub mod rabbitmq;
pub mod soak;
pub mod statsd;
pub mod webhook;
pub mod world;
