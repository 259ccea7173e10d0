//! The answer's body on its way back to the agent: passed on unchanged, chunk by chunk,
//! while its usage is read (an event stream as it goes, a JSON body once whole) and
//! recorded when it ends, or when the agent stops reading.

use crate::Shared;
use bytes::Bytes;
use futures_util::Stream;
use hyper::body::Frame;
use specrun_core::model_usage::{AnswerUsage, SseUsage};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Largest non-streamed body read for usage (the body itself passes on whatever its size).
const MAX_JSON_BODY: usize = 8 * 1024 * 1024;

type Upstream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

enum Reader {
    Events(SseUsage),
    Body { bytes: Vec<u8>, overflowed: bool },
}

impl Reader {
    fn feed(&mut self, chunk: &[u8]) {
        match self {
            Reader::Events(events) => events.feed(chunk),
            Reader::Body { bytes, overflowed } => {
                if bytes.len() + chunk.len() > MAX_JSON_BODY {
                    *overflowed = true;
                } else {
                    bytes.extend_from_slice(chunk);
                }
            }
        }
    }

    fn finish(self) -> AnswerUsage {
        match self {
            Reader::Events(events) => events.finish(),
            Reader::Body {
                overflowed: true, ..
            } => AnswerUsage::default(),
            Reader::Body { bytes, .. } => AnswerUsage::from_body(&bytes),
        }
    }
}

/// An answer's body, metered.
pub(crate) struct Metered {
    upstream: Upstream,
    reader: Option<Reader>,
    /// The model the request asked for, for an answer that names none.
    asked_model: Option<String>,
    shared: Arc<Shared>,
}

impl Metered {
    pub(crate) fn new(
        upstream: Upstream,
        event_stream: bool,
        asked_model: Option<String>,
        shared: Arc<Shared>,
    ) -> Self {
        let reader = if event_stream {
            Reader::Events(SseUsage::default())
        } else {
            Reader::Body {
                bytes: Vec::new(),
                overflowed: false,
            }
        };
        Metered {
            upstream,
            reader: Some(reader),
            asked_model,
            shared,
        }
    }

    fn record(&mut self) {
        if let Some(reader) = self.reader.take() {
            let mut answer = reader.finish();
            if answer.model.is_none() {
                answer.model = self.asked_model.take();
            }
            self.shared.record(&answer);
        }
    }
}

impl Stream for Metered {
    type Item = Result<Frame<Bytes>, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.upstream.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(reader) = self.reader.as_mut() {
                    reader.feed(&chunk);
                }
                self.shared.touch();
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(e))) => {
                self.record();
                Poll::Ready(Some(Err(std::io::Error::other(e))))
            }
            Poll::Ready(None) => {
                self.record();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        // The agent hung up mid-answer: what arrived so far still counts.
        self.record();
    }
}
