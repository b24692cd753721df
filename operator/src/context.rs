//! What every reconcile shares: the client, the images, the Event recorder and the
//! metrics; the controllers' error type and its retry policy.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};

use crate::build::{BuildError, Images, MANAGER};

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The operating system gave no randomness for a new secret: nothing is created
    /// rather than a guessable token.
    #[error("reading randomness for a new store token: {0}")]
    Randomness(#[source] std::io::Error),
}

impl Error {
    /// A short category: metric label and Event reason.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube(_) => "ApiError",
            Self::Build(b) => b.reason(),
            Self::Randomness(_) => "NoRandomness",
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub images: Images,
    pub recorder: Recorder,
    pub metrics: Arc<crate::admin::OperatorMetrics>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("images", &self.images)
            .finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(client: Client, images: Images) -> Arc<Self> {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        Arc::new(Self {
            client,
            images,
            recorder,
            metrics: Arc::default(),
        })
    }

    /// Publishes an Event about `obj` (a failure to publish is logged, not fatal).
    pub(crate) async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, "could not publish an event");
        }
    }

    /// Counts a Job the operator created.
    pub(crate) fn job_created(&self) {
        self.metrics
            .jobs_created
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Failed reconciles are retried with a delay (never a hot loop); invalid specs already
/// returned `await_change` with a condition and an Event.
pub fn error_policy<K>(obj: Arc<K>, e: &Error, _ctx: Arc<Context>) -> Action
where
    K: Resource,
{
    tracing::warn!(name = %obj.meta().name.clone().unwrap_or_default(), category = e.category(), error = %e, "reconcile failed");
    Action::requeue(Duration::from_secs(15))
}
