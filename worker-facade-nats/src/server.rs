//! Connecting to the server and opening what a cluster needs there: the
//! work-queue stream of tasks, the agents' consumer and the bucket.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;

use crate::config::{Cluster, task_key};
use crate::error::ConnectError;
use crate::store::Store;
use crate::wire::TaskMeta;

/// An open connection with the cluster's stream and bucket.
#[derive(Debug, Clone)]
pub(crate) struct Server {
    pub(crate) url: String,
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) stream: stream::Stream,
    pub(crate) store: Store,
}

impl Server {
    /// Connects, checks JetStream is on, and opens (or creates) the
    /// cluster's stream and bucket. Errors at start are returned, not
    /// retried; once connected, the client reconnects by itself for ever.
    pub(crate) async fn connect(
        url: &str,
        cluster: &Cluster,
        client_name: &str,
    ) -> Result<Self, ConnectError> {
        let client = async_nats::ConnectOptions::new()
            .name(client_name)
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            // Reconnect quickly after a server restart: 100 ms, 200 ms, ... up to 1 s.
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(100 * attempts.clamp(1, 10) as u64)
            })
            .connect(url)
            .await
            .map_err(|source| ConnectError::Unreachable {
                url: url.to_string(),
                source,
            })?;
        if !client.server_info().jetstream {
            return Err(ConnectError::NoJetStream {
                url: url.to_string(),
            });
        }
        let js = jetstream::new(client.clone());
        let setup = |what: &'static str, name: String| {
            let url = url.to_string();
            move |source: async_nats::Error| ConnectError::Setup {
                what,
                name,
                url,
                source,
            }
        };
        let stream_name = cluster.stream_name();
        let stream = js
            .get_or_create_stream(stream::Config {
                name: stream_name.clone(),
                subjects: vec![cluster.subjects()],
                // One message per task, removed once acked: a work queue.
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                duplicate_window: cluster.dedup_window,
                max_age: cluster.outcome_ttl,
                ..Default::default()
            })
            .await
            .map_err(|e| setup("stream", stream_name)(e.into()))?;
        let bucket = cluster.bucket_name();
        let kv = match js.get_key_value(bucket.clone()).await {
            Ok(kv) => kv,
            Err(_) => {
                // The bucket's stream, made by hand as the client library's
                // `create_key_value` would: that call first reads the
                // account's limits, whose reply from a 2.9 server this
                // client version cannot parse.
                js.get_or_create_stream(stream::Config {
                    name: format!("KV_{bucket}"),
                    description: Some(
                        "worker-facade-nats: tasks and outcomes, written once".into(),
                    ),
                    subjects: vec![format!("$KV.{bucket}.>")],
                    max_messages_per_subject: 1,
                    max_age: cluster.outcome_ttl,
                    storage: stream::StorageType::File,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    discard: stream::DiscardPolicy::New,
                    num_replicas: 1,
                    ..Default::default()
                })
                .await
                .map_err(|e| setup("bucket", bucket.clone())(e.into()))?;
                js.get_key_value(bucket.clone())
                    .await
                    .map_err(|e| setup("bucket", bucket)(e.into()))?
            }
        };
        Ok(Server {
            url: url.to_string(),
            client,
            js,
            stream,
            store: Store::new(kv),
        })
    }

    /// The largest message the server takes.
    pub(crate) fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    /// The durable pull consumer every agent shares.
    pub(crate) async fn agents_consumer(
        &self,
        cluster: &Cluster,
    ) -> Result<consumer::PullConsumer, ConnectError> {
        let name = cluster.consumer_name();
        self.stream
            .get_or_create_consumer(
                name,
                consumer::pull::Config {
                    durable_name: Some(name.to_string()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: cluster.ack_wait,
                    // Unlimited: the agents themselves give a task up after
                    // `max_attempts` deliveries, recording `NotRun` and
                    // acking, so that the stream ends empty. A server-side
                    // limit would leave the message in the stream for ever.
                    max_deliver: -1,
                    filter_subject: cluster.subjects(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| ConnectError::Setup {
                what: "consumer",
                name: name.to_string(),
                url: self.url.clone(),
                source: e.into(),
            })
    }

    /// Stores each task's copy in the bucket (for a resuming client), then
    /// publishes the tasks, waiting for the server to take each. Both steps
    /// are pipelined: one round trip per step for the whole batch. The
    /// copies are all stored before any task is published, so a resumed
    /// client knows every task an agent may hold. Retrying a batch is
    /// harmless: the copies are plain puts, the publishes are deduplicated.
    pub(crate) async fn store_and_publish(
        &self,
        cluster: &Cluster,
        batch: &[(TaskMeta, Bytes, Bytes)],
    ) -> Result<(), async_nats::Error> {
        let bucket = cluster.bucket_name();
        let mut acks = Vec::with_capacity(batch.len());
        for (meta, stored, _) in batch {
            let subject = format!("$KV.{bucket}.{}", task_key(&meta.job, meta.id));
            acks.push(self.js.publish(subject, stored.clone()).await?);
        }
        for ack in acks.drain(..) {
            ack.await?;
        }
        for (meta, _, payload) in batch {
            let subject = cluster.task_subject(&meta.job, meta.id);
            acks.push(
                self.js
                    .publish_with_headers(subject, meta.headers(), payload.clone())
                    .await?,
            );
        }
        for ack in acks {
            ack.await?;
        }
        Ok(())
    }

    /// Whether a task's message is still in the stream (waiting for an
    /// agent, or held by one). `Err` when the server could not say.
    pub(crate) async fn task_waiting(
        &self,
        cluster: &Cluster,
        job: &str,
        id: u64,
    ) -> Result<bool, async_nats::Error> {
        use jetstream::stream::LastRawMessageErrorKind;
        match self
            .stream
            .get_last_raw_message_by_subject(&cluster.task_subject(job, id))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}
