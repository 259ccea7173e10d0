//! The run queue: [`Queue`] on RabbitMQ (AMQP 0-9-1), the broker Celery users already run.
//!
//! The port is SQS-shaped; this is how it maps onto AMQP:
//!
//! - **receive**: one consumer with manual acks and a prefetch of the runner's concurrency,
//!   so the broker never hands this runner more messages than it can run at once. A
//!   Celery task (protocol 2 headers, or a protocol 1 JSON body) is handed to the worker
//!   as the kombu envelope [`celery::envelope_from_amqp`] builds, which the worker reads
//!   as it reads tasks from SQS; any other message (specrun's own) as its body.
//! - **receipt**: the connection's generation and the delivery tag. A delivery tag means
//!   something only on the channel it came on: after a reconnect the old receipts are
//!   dead, and their messages were requeued by the broker when the connection dropped.
//! - **visibility / extend**: an unacked message stays with this consumer until the
//!   connection drops, so hiding needs nothing from the broker. The visibility deadline is
//!   kept here instead: a delivery neither deleted nor extended past it (the worker left
//!   it for a retry) is *released* — copied back to the queue with its receive count, then
//!   acked — which is what SQS does when a visibility timeout runs out.
//! - **receive_count**: RabbitMQ counts deliveries only on quorum queues (the
//!   `x-delivery-count` header); a classic queue only flags a redelivery. Celery's
//!   `retries` header counts Celery's own retries, not deliveries, so it is not used.
//!   The count is the `x-specrun-receives` header this adapter writes when it releases a
//!   message, plus the broker's count (`x-delivery-count`, or 1 for the `redelivered`
//!   flag), plus this delivery.
//! - **dead-lettering**: a message released on its last allowed receive (the runner's
//!   `--max-receives`) goes to the queue `<queue>.dead-letter` instead, with the header
//!   `x-specrun-dead-letter-reason`. This adapter moves it itself rather than by a
//!   dead-letter exchange argument on the queue: Celery producers declare the queue with
//!   their own arguments (none by default), and RabbitMQ refuses a declaration whose
//!   arguments differ from the queue's, so a runner-declared `x-dead-letter-exchange`
//!   would break every unconfigured producer. (An operator's dead-letter *policy* on the
//!   queue still applies to messages the broker itself dead-letters.)
//! - **send_delayed** (a Celery `eta`): the body waits in `<queue>.delay.<seconds>`, a
//!   queue whose message TTL dead-letters it back into the run queue when due; RabbitMQ
//!   drops such a delay queue a minute after its last use.
//! - **reconnect**: a lost connection (a broker restart) shows as a closed channel; the
//!   next call connects again, and an error meanwhile is `Unavailable`, which the
//!   runner's retrying queue retries with backoff.
//!
//! Every copy this adapter publishes is confirmed by the broker (publisher confirms)
//! before the original is acked: a crash in between leaves two copies, never none.

use amqprs::callbacks::ChannelCallback;
use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicPublishArguments, BasicQosArguments, Channel,
    ConfirmSelectArguments, ConsumerMessage, QueueDeclareArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, FieldTable, FieldValue, Nack, Return};
use async_trait::async_trait;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use specrun_core::celery::{self, AmqpDelivery};
use specrun_core::ports::{Bytes, Queue, Received, StoreError};
use specrun_core::service_url::AmqpUrl;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Mutex};

/// The header carrying the receives counted by this adapter's releases.
const RECEIVES_HEADER: &str = "x-specrun-receives";
/// Why a message was moved to the dead-letter queue.
const DEAD_LETTER_REASON_HEADER: &str = "x-specrun-dead-letter-reason";
/// How long the broker gets to answer a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the broker gets to confirm a publish.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a long receive wakes to release deliveries whose visibility ran out.
const TICK: Duration = Duration::from_secs(1);

/// One RabbitMQ queue, consumed with manual acks.
pub struct AmqpQueue {
    url: AmqpUrl,
    queue: String,
    /// Where messages go after their last allowed receive; `None` for a queue that is
    /// itself a dead-letter queue.
    dead_letter: Option<String>,
    max_receives: u32,
    prefetch: u16,
    session: Mutex<Option<Arc<Session>>>,
    generations: AtomicU64,
    /// Deliveries handed out and not yet acked, by delivery tag.
    held: std::sync::Mutex<HashMap<u64, Held>>,
}

/// A connection, its one channel (consume, ack and confirmed publish), and what arrives
/// on it.
struct Session {
    generation: u64,
    connection: Connection,
    channel: Channel,
    deliveries: Mutex<mpsc::UnboundedReceiver<ConsumerMessage>>,
    confirms: Mutex<Confirms>,
}

impl Session {
    fn is_open(&self) -> bool {
        self.connection.is_open() && self.channel.is_open()
    }
}

/// Publisher confirms as they arrive, and the sequence number of the last publish.
struct Confirms {
    rx: mpsc::UnboundedReceiver<Confirm>,
    published: u64,
}

#[derive(Debug, Clone, Copy)]
struct Confirm {
    tag: u64,
    multiple: bool,
    ack: bool,
}

/// An unacked delivery: enough to release it.
struct Held {
    generation: u64,
    deadline: Instant,
    properties: BasicProperties,
    content: Vec<u8>,
    receive_count: u32,
}

/// Forwards the broker's publisher confirms to the publishing side.
struct ConfirmForwarder(mpsc::UnboundedSender<Confirm>);

#[async_trait]
impl ChannelCallback for ConfirmForwarder {
    async fn close(
        &mut self,
        _: &Channel,
        close: CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        tracing::warn!(%close, "the broker closed the queue channel");
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, _: Cancel) -> Result<(), amqprs::error::Error> {
        tracing::warn!("the broker cancelled the consumer (the queue was deleted?)");
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        let _ = self.0.send(Confirm {
            tag: ack.delivery_tag(),
            multiple: ack.mutiple(),
            ack: true,
        });
    }
    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        let _ = self.0.send(Confirm {
            tag: nack.delivery_tag(),
            multiple: nack.multiple(),
            ack: false,
        });
    }
    async fn publish_return(&mut self, _: &Channel, _: Return, _: BasicProperties, _: Vec<u8>) {}
}

/// A `receipt` is `<generation>.<delivery tag>`.
fn receipt(generation: u64, tag: u64) -> String {
    format!("{generation}.{tag}")
}

fn parse_receipt(receipt: &str) -> Result<(u64, u64), StoreError> {
    receipt
        .split_once('.')
        .and_then(|(g, t)| Some((g.parse().ok()?, t.parse().ok()?)))
        .ok_or_else(|| StoreError::InvalidKey(receipt.to_owned()))
}

impl AmqpQueue {
    /// The queue `queue` on the broker at `url`, taking at most `prefetch` unacked
    /// messages at once. Connects on first use.
    pub fn new(url: AmqpUrl, queue: impl Into<String>, prefetch: u16) -> Self {
        AmqpQueue {
            url,
            queue: queue.into(),
            dead_letter: None,
            max_receives: u32::MAX,
            prefetch: prefetch.max(1),
            session: Mutex::new(None),
            generations: AtomicU64::new(0),
            held: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Moves a message released after `max_receives` receives to `<queue>.dead-letter`.
    pub fn with_dead_letters(mut self, max_receives: u32) -> Self {
        self.dead_letter = Some(dead_letter_queue(&self.queue));
        self.max_receives = max_receives.max(1);
        self
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.queue
    }

    /// Connects (declaring the queues) now: a wrong URL, password or virtual host is
    /// reported at start rather than on the first receive.
    pub async fn check(&self) -> Result<(), StoreError> {
        self.session().await.map(|_| ())
    }

    fn unavailable(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::unavailable(
            format!("{} queue {}", self.url.redacted(), self.queue),
            format!("{what}: {e}"),
        )
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Held>> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The open session, connecting when there is none or it was lost.
    async fn session(&self) -> Result<Arc<Session>, StoreError> {
        let mut slot = self.session.lock().await;
        if let Some(session) = slot.as_ref().filter(|s| s.is_open()) {
            return Ok(session.clone());
        }
        if slot.take().is_some() {
            tracing::warn!(queue = %self.queue, "the broker connection was lost; reconnecting (unacked messages were returned to the queue)");
        }
        // Deliveries of the lost connection are the broker's again.
        self.lock_held().clear();
        let session = Arc::new(self.connect().await?);
        *slot = Some(session.clone());
        Ok(session)
    }

    async fn connect(&self) -> Result<Session, StoreError> {
        let url = &self.url;
        let args = OpenConnectionArguments::new(&url.host, url.port, &url.user, &url.password)
            .virtual_host(&url.vhost)
            .connection_name("specrun runner")
            .finish();
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, Connection::open(&args))
            .await
            .map_err(|_| self.unavailable("connecting", "no answer from the broker"))?
            .map_err(|e| self.unavailable("connecting", e))?;
        let channel = connection
            .open_channel(None)
            .await
            .map_err(|e| self.unavailable("opening a channel", e))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let fail = |what: &str, e: amqprs::error::Error| self.unavailable(what, e);
        channel
            .register_callback(ConfirmForwarder(tx))
            .await
            .map_err(|e| fail("registering callbacks", e))?;
        channel
            .confirm_select(ConfirmSelectArguments::new(false))
            .await
            .map_err(|e| fail("turning publisher confirms on", e))?;
        self.ensure_queue(&connection, &channel, &self.queue)
            .await?;
        if let Some(dead) = &self.dead_letter {
            self.ensure_queue(&connection, &channel, dead).await?;
        }
        channel
            .basic_qos(BasicQosArguments::new(0, self.prefetch, false))
            .await
            .map_err(|e| fail("setting the prefetch", e))?;
        let (_, deliveries) = channel
            .basic_consume_rx(
                BasicConsumeArguments::new(&self.queue, "")
                    .manual_ack(true)
                    .finish(),
            )
            .await
            .map_err(|e| fail("consuming", e))?;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(queue = %self.queue, broker = %url.redacted(), "consuming from the broker");
        Ok(Session {
            generation,
            connection,
            channel,
            deliveries: Mutex::new(deliveries),
            confirms: Mutex::new(Confirms { rx, published: 0 }),
        })
    }

    /// Declares `name` durable unless it exists: an existing queue is used with whatever
    /// arguments its owner gave it (a quorum queue, a policy), since declaring it again
    /// with other arguments would be refused. A passive declaration of a missing queue
    /// closes its channel, so it is tried on a channel of its own.
    async fn ensure_queue(
        &self,
        connection: &Connection,
        channel: &Channel,
        name: &str,
    ) -> Result<(), StoreError> {
        let probe = connection
            .open_channel(None)
            .await
            .map_err(|e| self.unavailable("opening a channel", e))?;
        let exists = probe
            .queue_declare(QueueDeclareArguments::new(name).passive(true).finish())
            .await
            .is_ok();
        if exists {
            let _ = probe.close().await;
            return Ok(());
        }
        channel
            .queue_declare(QueueDeclareArguments::durable_client_named(name))
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable(&format!("declaring queue {name}"), e))
    }

    /// Publishes one message through the default exchange to `queue` and waits for the
    /// broker to confirm it.
    async fn publish(
        &self,
        session: &Session,
        queue: &str,
        properties: BasicProperties,
        content: Vec<u8>,
    ) -> Result<(), StoreError> {
        let mut confirms = session.confirms.lock().await;
        session
            .channel
            .basic_publish(properties, content, BasicPublishArguments::new("", queue))
            .await
            .map_err(|e| self.unavailable("publishing", e))?;
        confirms.published += 1;
        let tag = confirms.published;
        let waited = tokio::time::timeout(CONFIRM_TIMEOUT, async {
            while let Some(confirm) = confirms.rx.recv().await {
                if confirm.tag == tag || (confirm.multiple && confirm.tag > tag) {
                    return Some(confirm.ack);
                }
            }
            None
        })
        .await;
        match waited {
            Ok(Some(true)) => Ok(()),
            Ok(Some(false)) => {
                Err(self.unavailable("publishing", "the broker refused the message (nack)"))
            }
            Ok(None) | Err(_) => Err(self.unavailable("publishing", "no confirm from the broker")),
        }
    }

    /// Copies back every delivery whose visibility ran out, then acks it: to the queue
    /// with its receive count, or to the dead-letter queue after its last receive.
    async fn release_expired(&self, session: &Session) {
        let now = Instant::now();
        let expired: Vec<(u64, Held)> = {
            let mut held = self.lock_held();
            let tags: Vec<u64> = held
                .iter()
                .filter(|(_, h)| h.generation == session.generation && h.deadline <= now)
                .map(|(tag, _)| *tag)
                .collect();
            tags.into_iter()
                .filter_map(|tag| held.remove(&tag).map(|h| (tag, h)))
                .collect()
        };
        for (tag, held) in expired {
            let last = held.receive_count >= self.max_receives;
            self.move_delivery(
                session,
                tag,
                held.properties,
                held.content,
                held.receive_count,
                last,
            )
            .await;
        }
    }

    /// Publishes a copy of delivery `tag` that counts `receives` receives (to the
    /// dead-letter queue when `dead`), then acks the delivery.
    async fn move_delivery(
        &self,
        session: &Session,
        tag: u64,
        mut properties: BasicProperties,
        content: Vec<u8>,
        receives: u32,
        dead: bool,
    ) {
        let mut headers = properties.headers().cloned().unwrap_or_default();
        set_header(
            &mut headers,
            RECEIVES_HEADER,
            FieldValue::l(i64::from(receives)),
        );
        let target = match &self.dead_letter {
            Some(dead_letter) if dead => {
                let reason = format!(
                    "received {receives} times from {} without finishing",
                    self.queue
                );
                tracing::warn!(queue = %self.queue, receives, "moving a message to the dead-letter queue {dead_letter}");
                if let Ok(text) = reason.as_str().try_into() {
                    set_header(&mut headers, DEAD_LETTER_REASON_HEADER, FieldValue::S(text));
                }
                dead_letter.clone()
            }
            _ => self.queue.clone(),
        };
        properties.with_headers(headers);
        let moved = self.publish(session, &target, properties, content).await;
        let acked = match moved {
            Ok(()) => session
                .channel
                .basic_ack(BasicAckArguments::new(tag, false))
                .await
                .map_err(|e| self.unavailable("acking", e)),
            Err(e) => Err(e),
        };
        if let Err(e) = acked {
            tracing::warn!(error = %e, "could not move a message to {target}; the broker returns it when the connection drops");
        }
    }

    /// A delivery as the worker sees it, remembered until it is acked or released; or,
    /// like SQS's redrive, moved to the dead-letter queue instead when it was received its
    /// last allowed time already (its runner died with it).
    async fn accept(
        &self,
        session: &Session,
        message: ConsumerMessage,
        visibility: Duration,
    ) -> Option<Received> {
        let deliver = message.deliver?;
        let properties = message.basic_properties.unwrap_or_default();
        let content = message.content.unwrap_or_default();
        let headers = properties.headers().map(table_to_json).unwrap_or_default();
        let counted = header_count(&headers, RECEIVES_HEADER);
        let by_broker = match header_count(&headers, "x-delivery-count") {
            0 => u32::from(deliver.redelivered()),
            n => n,
        };
        let receive_count = counted.saturating_add(by_broker).saturating_add(1);
        let tag = deliver.delivery_tag();
        if self.dead_letter.is_some() && receive_count > self.max_receives {
            self.move_delivery(session, tag, properties, content, receive_count - 1, true)
                .await;
            return None;
        }
        let delivery = AmqpDelivery {
            headers,
            content_type: properties.content_type().map(String::as_str),
            content_encoding: properties.content_encoding().map(String::as_str),
            correlation_id: properties.correlation_id().map(String::as_str),
            reply_to: properties.reply_to().map(String::as_str),
            body: &content,
        };
        let body = if celery::is_amqp_task(&delivery) {
            celery::envelope_from_amqp(&delivery)
        } else {
            content.clone()
        };
        let message_id = properties
            .message_id()
            .or(properties.correlation_id())
            .cloned()
            .unwrap_or_else(|| format!("{:x}", Sha256::digest(&content)));
        self.lock_held().insert(
            tag,
            Held {
                generation: session.generation,
                deadline: Instant::now() + visibility,
                properties,
                content,
                receive_count,
            },
        );
        Some(Received {
            message_id,
            receipt: receipt(session.generation, tag),
            body,
            receive_count,
        })
    }

    /// Drops session `generation` (its consumer ended): the next call connects again.
    async fn forget(&self, generation: u64) {
        let mut slot = self.session.lock().await;
        if slot.as_ref().is_some_and(|s| s.generation == generation) {
            *slot = None;
            tracing::warn!(queue = %self.queue, "the broker ended the consumer; reconnecting (unacked messages were returned to the queue)");
        }
    }

    /// Whether `session` is open and still the one in use.
    async fn is_current(&self, session: &Session) -> bool {
        session.is_open()
            && self
                .session
                .lock()
                .await
                .as_ref()
                .is_some_and(|s| s.generation == session.generation)
    }

    /// The open session if `receipt` was handed out on it.
    async fn session_of(&self, receipt: &str) -> Result<(Arc<Session>, u64), StoreError> {
        let (generation, tag) = parse_receipt(receipt)?;
        let current = self.session.lock().await.clone();
        match current {
            Some(session) if session.generation == generation && session.is_open() => Ok((session, tag)),
            _ => Err(StoreError::backend(
                format!("queue {}", self.queue),
                "the delivery was on a broker connection that is gone; the broker delivers the message again",
            )),
        }
    }

    fn persistent_json() -> BasicProperties {
        BasicProperties::default()
            .with_content_type("application/json")
            .with_persistence(true)
            .with_message_id(&uuid::Uuid::now_v7().to_string())
            .finish()
    }
}

/// `<queue>.dead-letter`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead-letter")
}

fn set_header(headers: &mut FieldTable, name: &str, value: FieldValue) {
    if let Ok(name) = name.try_into() {
        headers.insert(name, value);
    }
}

fn header_count(headers: &Map<String, Value>, name: &str) -> u32 {
    headers
        .get(name)
        .and_then(Value::as_u64)
        .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// An AMQP headers table as JSON, the way kombu hands Celery its headers.
fn table_to_json(table: &FieldTable) -> Map<String, Value> {
    table
        .as_ref()
        .iter()
        .map(|(name, value)| (name.as_ref().clone(), field_to_json(value)))
        .collect()
}

fn field_to_json(value: &FieldValue) -> Value {
    match value {
        FieldValue::t(b) => Value::Bool(*b),
        FieldValue::b(n) => Value::from(*n),
        FieldValue::B(n) => Value::from(*n),
        FieldValue::s(n) => Value::from(*n),
        FieldValue::u(n) => Value::from(*n),
        FieldValue::I(n) => Value::from(*n),
        FieldValue::i(n) => Value::from(*n),
        FieldValue::l(n) => Value::from(*n),
        FieldValue::f(n) => Value::from(*n),
        FieldValue::d(n) => Value::from(*n),
        FieldValue::S(s) => Value::String(s.as_ref().clone()),
        FieldValue::A(items) => Value::Array(
            Vec::<FieldValue>::from(items.clone())
                .iter()
                .map(field_to_json)
                .collect(),
        ),
        FieldValue::T(t) => Value::from(*t),
        FieldValue::F(table) => Value::Object(table_to_json(table)),
        FieldValue::x(bytes) => {
            Value::String(String::from_utf8_lossy(&Vec::<u8>::from(bytes.clone())).into_owned())
        }
        FieldValue::D(_) | FieldValue::V => Value::Null,
    }
}

#[async_trait]
impl Queue for AmqpQueue {
    async fn send(&self, body: Bytes) -> Result<String, StoreError> {
        let session = self.session().await?;
        let properties = Self::persistent_json();
        let id = properties.message_id().cloned().unwrap_or_default();
        self.publish(&session, &self.queue, properties, body.to_vec())
            .await?;
        Ok(id)
    }

    /// The body waits in `<queue>.delay.<seconds>` (message TTL, dead-lettered back into
    /// the run queue when due).
    async fn send_delayed(&self, body: Bytes, delay: Duration) -> Result<String, StoreError> {
        let session = self.session().await?;
        let secs = delay.as_secs().max(1);
        let ttl_ms = i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let delay_queue = format!("{}.delay.{secs}", self.queue);
        let mut arguments = FieldTable::new();
        set_header(&mut arguments, "x-message-ttl", FieldValue::l(ttl_ms));
        set_header(
            &mut arguments,
            "x-expires",
            FieldValue::l(ttl_ms.saturating_add(60_000)),
        );
        if let (Ok(exchange), Ok(key)) = ("".try_into(), self.queue.as_str().try_into()) {
            set_header(
                &mut arguments,
                "x-dead-letter-exchange",
                FieldValue::S(exchange),
            );
            set_header(
                &mut arguments,
                "x-dead-letter-routing-key",
                FieldValue::S(key),
            );
        }
        session
            .channel
            .queue_declare(
                QueueDeclareArguments::durable_client_named(&delay_queue)
                    .arguments(arguments)
                    .finish(),
            )
            .await
            .map_err(|e| self.unavailable(&format!("declaring {delay_queue}"), e))?;
        let properties = Self::persistent_json();
        let id = properties.message_id().cloned().unwrap_or_default();
        self.publish(&session, &delay_queue, properties, body.to_vec())
            .await?;
        Ok(id)
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Received>, StoreError> {
        let session = self.session().await?;
        self.release_expired(&session).await;
        let deadline = Instant::now() + wait;
        let mut received = Vec::new();
        let mut deliveries = session.deliveries.lock().await;
        while received.len() < max.max(1) {
            let message = match deliveries.try_recv() {
                Ok(message) => message,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.forget(session.generation).await;
                    break;
                }
                Err(mpsc::error::TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if !received.is_empty() || left.is_zero() {
                        break;
                    }
                    match tokio::time::timeout(left.min(TICK), deliveries.recv()).await {
                        Ok(Some(message)) => message,
                        Ok(None) => {
                            self.forget(session.generation).await;
                            break;
                        }
                        Err(_) if session.is_open() => {
                            self.release_expired(&session).await;
                            continue;
                        }
                        Err(_) => break,
                    }
                }
            };
            received.extend(self.accept(&session, message, visibility).await);
        }
        if received.is_empty() && !self.is_current(&session).await {
            return Err(self.unavailable("receiving", "the broker connection was lost"));
        }
        Ok(received)
    }

    /// Pushes the delivery's deadline; the broker keeps it hidden anyway while the
    /// connection lives. A receipt of a lost connection has nothing to extend.
    async fn extend(&self, receipt: &str, visibility: Duration) -> Result<(), StoreError> {
        let (generation, tag) = parse_receipt(receipt)?;
        if let Some(held) = self
            .lock_held()
            .get_mut(&tag)
            .filter(|h| h.generation == generation)
        {
            held.deadline = Instant::now() + visibility;
        }
        Ok(())
    }

    async fn delete(&self, receipt: &str) -> Result<(), StoreError> {
        let (session, tag) = self.session_of(receipt).await?;
        self.lock_held().remove(&tag);
        session
            .channel
            .basic_ack(BasicAckArguments::new(tag, false))
            .await
            .map_err(|e| self.unavailable("acking", e))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn receipts_round_trip_and_bad_ones_are_refused() {
        assert_eq!(parse_receipt(&receipt(3, 17)).unwrap(), (3, 17));
        for bad in ["", "3", "a.b", "3.", ".4"] {
            assert!(parse_receipt(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn celery_headers_become_json() {
        let mut table = FieldTable::new();
        set_header(
            &mut table,
            "task",
            FieldValue::S("specrun.run".try_into().unwrap()),
        );
        set_header(&mut table, "retries", FieldValue::I(0));
        set_header(&mut table, "eta", FieldValue::V);
        set_header(
            &mut table,
            "timelimit",
            FieldValue::A(vec![FieldValue::V, FieldValue::l(30)].try_into().unwrap()),
        );
        let json = Value::Object(table_to_json(&table));
        assert_eq!(
            json,
            serde_json::json!({"task": "specrun.run", "retries": 0, "eta": null, "timelimit": [null, 30]})
        );
        assert_eq!(header_count(json.as_object().unwrap(), "retries"), 0);
    }
}
