//! Builders for test data.

use igl_core::{NewEvent, NewJob, QueueName};
use igl_domain::{MessageFields, NewMessage};

/// A valid Certificate-of-Origin message `sender → receiver` with the given `sender_ref`.
pub fn message(sender: &str, receiver: &str, sender_ref: &str) -> NewMessage {
    message_with_predicate(
        sender,
        receiver,
        sender_ref,
        "UN.CEFACT.Trade.CertificateOfOrigin.created",
    )
}

/// Like [`message`] with a chosen predicate.
pub fn message_with_predicate(
    sender: &str,
    receiver: &str,
    sender_ref: &str,
    predicate: &str,
) -> NewMessage {
    NewMessage::parse(MessageFields {
        sender: Some(sender.into()),
        receiver: Some(receiver.into()),
        subject: Some(format!("{sender}.abn0000000000.{sender_ref}")),
        obj: Some("QmQtYtUS7K1AdKjbuMsmPmPGDLaKL38M5HYwqxW9RKW49n".into()),
        predicate: Some(predicate.into()),
        sender_ref: Some(sender_ref.into()),
    })
    .expect("fixture message is valid")
}

/// A queue name, panicking on invalid test input.
pub fn queue(name: &str) -> QueueName {
    QueueName::parse(name).expect("fixture queue name is valid")
}

/// A job on `queue` whose payload carries `n`.
pub fn job(queue_name: &str, n: u64) -> NewJob {
    NewJob::new(
        queue(queue_name),
        serde_json::json!({"type": "test.v1", "n": n}),
    )
}

/// An event with id `id` on `topic`.
pub fn event(id: &str, topic: &str) -> NewEvent {
    NewEvent {
        id: id.into(),
        kind: "message.status".into(),
        topic: topic.into(),
        payload: serde_json::json!({"predicate": topic, "id": id}),
    }
}
