//! Notifications of a run's final status: the event's JSON ([`event`]), how it is signed
//! ([`signature`]), where it may go ([`callback`]) and what run.json records about its
//! deliveries ([`delivery`]). Sending is the runner's (`runner/src/notify/`).

pub mod callback;
pub mod delivery;
pub mod event;
pub mod signature;

pub use callback::{CallbackPolicy, NotifyUrl, UrlRefused};
pub use delivery::{DeliveryAttempt, DeliveryClaim, NextDelivery, NotificationRecord};
pub use event::RunEvent;
