//! A node on PostgreSQL + RabbitMQ (`queue.backend = "amqp"`): jobs go through the SQL
//! outbox and the relay to RabbitMQ, workers consume them there. Needs
//! `IGL_TEST_POSTGRES_URL` and `IGL_TEST_AMQP_URL` (ignored, with the reason, otherwise).

use std::time::{Duration, Instant};

use igl_config::{Component, QueueBackend, SecretString};
use igl_core::pipeline::{PROCESS_QUEUE, ROUTE_QUEUE};
use igl_core::{JobQueue, NewJob};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Database, TestNode, TestNodeBuilder, fresh_schema, json};

fn on_broker(builder: TestNodeBuilder) -> TestNodeBuilder {
    let url = std::env::var("IGL_TEST_AMQP_URL").expect("IGL_TEST_AMQP_URL");
    builder
        .database(Database::Postgres {
            schema: fresh_schema(),
        })
        .configure(move |settings| {
            settings.queue.backend = QueueBackend::Amqp;
            settings.queue.amqp.url = Some(SecretString::new(url));
            settings.queue.amqp.prefix = format!("t{}.", uuid::Uuid::new_v4().simple());
        })
}

async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn cleanup(node: &TestNode) {
    let outbox = node.outbox().expect("broker shape");
    outbox
        .broker
        .delete_topology(&igl_node::PIPELINE_QUEUES)
        .await
        .unwrap();
}

/// POSTed messages are processed and routed by workers consuming RabbitMQ (no channel
/// serves SG here, so the router rejects them with a reason): every status is visible over
/// the API, the outbox and the broker queues end empty.
#[cfg_attr(
    igl_skip_broker_shape,
    ignore = "set IGL_TEST_POSTGRES_URL and IGL_TEST_AMQP_URL to run"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_postgres_and_rabbitmq_processes_messages_end_to_end() {
    const MESSAGES: usize = 40;
    let node = on_broker(TestNode::builder().components(&[
        Component::MessageApi,
        Component::AdminApi,
        Component::MessageProcessor,
        Component::Router,
        Component::OutboxRelay,
    ]))
    .start()
    .await;
    let posts = (0..MESSAGES).map(|n| {
        let node = &node;
        async move {
            let body = json!({
                "sender": "AU", "receiver": "SG", "subject": format!("AU.coo.{n}"),
                "obj": "https://example.org/doc",
                "predicate": "UN.CEFACT.Trade.CertificateOfOrigin.created",
                "sender_ref": format!("amqp-{n}"),
            });
            node.post_json("/api/v1/messages", &body).await.status()
        }
    });
    let statuses = futures::future::join_all(posts).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::CREATED),
        "{statuses:?}"
    );

    for n in 0..MESSAGES {
        let path = format!("/api/v1/messages/AU:amqp-{n}");
        eventually("the message processed and routed", || async {
            let message = json(node.get(&path).await).await;
            (message["status"] == "rejected").then_some(())
        })
        .await;
    }
    let outbox = node.outbox().expect("broker shape");
    for queue in [PROCESS_QUEUE, ROUTE_QUEUE] {
        eventually("empty queues", || async {
            let sql = outbox.sql.depth(&queue).await.unwrap();
            let broker = outbox.broker.depth(&queue).await.unwrap();
            (sql == Default::default() && broker == Default::default()).then_some(())
        })
        .await;
    }
    let queues = json(node.get("/api/v1/admin/queues").await).await;
    assert!(
        queues["queues"].as_array().is_some_and(|q| !q.is_empty()),
        "{queues}"
    );
    // The relay's series: every routed message's job went through the outbox.
    let metrics = node.metrics().await;
    let relayed: f64 = metrics
        .lines()
        .find(|line| line.starts_with("igl_outbox_relayed_total{queue=\"route\"}"))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no relayed count for route in\n{metrics}"));
    assert!(relayed >= MESSAGES as f64, "{relayed}");
    assert!(
        metrics.contains("igl_outbox_publish_lag_seconds_count{queue=\"route\"}"),
        "{metrics}"
    );
    cleanup(&node).await;
    node.stop().await;
}

/// A job the processor cannot decode is dead-lettered on the broker; the Admin API lists
/// it and replays it back onto its RabbitMQ queue.
#[cfg_attr(
    igl_skip_broker_shape,
    ignore = "set IGL_TEST_POSTGRES_URL and IGL_TEST_AMQP_URL to run"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_on_the_broker_are_listed_and_replayed_by_the_admin_api() {
    let node =
        on_broker(TestNode::builder().components(&[Component::AdminApi, Component::OutboxRelay]))
            .start()
            .await;
    let payload = json!({"type": "no-such-job.v1", "marker": uuid::Uuid::new_v4().to_string()});
    node.storage()
        .enqueue(&[NewJob::new(PROCESS_QUEUE, payload.clone())])
        .await
        .unwrap();
    let outbox = node.outbox().expect("broker shape");
    eventually("the job relayed to the broker", || async {
        (outbox.broker.depth(&PROCESS_QUEUE).await.unwrap().ready == 1).then_some(())
    })
    .await;
    let report = node.drain(PROCESS_QUEUE).await;
    assert_eq!(report.dead_lettered, 1, "{report:?}");

    let page = json(node.get("/api/v1/admin/dead-letters?queue=process").await).await;
    let letters = page["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{page}");
    assert_eq!(letters[0]["payload"], payload);
    assert_eq!(letters[0]["attempts"], 1);
    let id = letters[0]["id"].as_i64().unwrap();
    let replay = node
        .request(
            Method::POST,
            &format!("/api/v1/admin/dead-letters/{id}/replay"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::OK);
    assert_eq!(json(replay).await, json!({"replayed": true}));
    let page = json(node.get("/api/v1/admin/dead-letters").await).await;
    assert_eq!(page["dead_letters"], Value::Array(vec![]));
    let claimed = node
        .storage()
        .claim(&PROCESS_QUEUE, 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!((claimed[0].attempt, &claimed[0].payload), (1, &payload));
    node.storage().ack(&[claimed[0].receipt()]).await.unwrap();
    cleanup(&node).await;
    node.stop().await;
}
