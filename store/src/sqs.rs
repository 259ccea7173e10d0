//! The run queue: [`Queue`] on SQS. Long polling, visibility extension while a run is in
//! progress, and the receive count SQS keeps (which drives the dead-letter queue).

use crate::aws_error::classify;
use async_trait::async_trait;
use aws_sdk_sqs::types::MessageSystemAttributeName;
use specrun_core::ports::{Bytes, Queue, Received, StoreError};
use std::time::Duration;

/// A queue URL and its client.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

/// The longest `DelaySeconds` SQS accepts.
const MAX_DELAY_SECS: i32 = 900;

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: impl Into<String>) -> Self {
        SqsQueue {
            client,
            url: url.into(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends one message; without a `delay` the queue's own delivery delay applies.
    async fn send_message(
        &self,
        body: Bytes,
        delay: Option<Duration>,
    ) -> Result<String, StoreError> {
        let body =
            String::from_utf8(body.into()).map_err(|e| StoreError::backend("queue message", e))?;
        let sent = self
            .client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .set_delay_seconds(delay.map(|d| seconds(d).min(MAX_DELAY_SECS)))
            .send()
            .await
            .map_err(|e| classify(&self.url, e))?;
        Ok(sent.message_id().unwrap_or_default().to_owned())
    }
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, body: Bytes) -> Result<String, StoreError> {
        self.send_message(body, None).await
    }

    async fn send_delayed(&self, body: Bytes, delay: Duration) -> Result<String, StoreError> {
        self.send_message(body, Some(delay)).await
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Received>, StoreError> {
        let max = i32::try_from(max.clamp(1, 10)).unwrap_or(10);
        let received = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max)
            .wait_time_seconds(seconds(wait).min(20))
            .visibility_timeout(seconds(visibility))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| classify(&self.url, e))?;
        Ok(received
            .messages()
            .iter()
            .map(|m| Received {
                message_id: m.message_id().unwrap_or_default().to_owned(),
                receipt: m.receipt_handle().unwrap_or_default().to_owned(),
                body: m.body().unwrap_or_default().as_bytes().to_vec(),
                receive_count: m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1),
            })
            .collect())
    }

    async fn extend(&self, receipt: &str, visibility: Duration) -> Result<(), StoreError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(seconds(visibility))
            .send()
            .await
            .map_err(|e| classify(&self.url, e))?;
        Ok(())
    }

    async fn delete(&self, receipt: &str) -> Result<(), StoreError> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| classify(&self.url, e))?;
        Ok(())
    }
}
