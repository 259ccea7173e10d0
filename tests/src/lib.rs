//! Helpers that start and stop the real services the end-to-end tests run against.

pub mod git_http;
