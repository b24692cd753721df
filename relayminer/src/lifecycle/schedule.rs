//! The block-driven scheduler of `relayminer run`: a claim pass and a prove pass after
//! every new block (each pass acts only on sessions whose window is open, so most are a
//! store listing and nothing else). The two run independently: a proof transaction
//! waiting for inclusion does not hold back the next window's claims.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Lifecycle;

/// The running scheduler; stops its tasks when dropped.
#[derive(Debug)]
pub struct Scheduler {
    tasks: Vec<JoinHandle<()>>,
    height: watch::Receiver<i64>,
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Scheduler {
    /// Starts following blocks and running passes.
    pub fn start(lifecycle: Arc<Lifecycle>) -> Self {
        let (tx, height) = watch::channel(0i64);
        let follower = {
            let lc = lifecycle.clone();
            tokio::spawn(async move {
                // Start at the node's current height (retrying while it is down).
                let start = loop {
                    match lc.rpc().status().await {
                        Ok(s) => break s.latest_height.max(1),
                        Err(e) => {
                            tracing::warn!(error = %e, "scheduler: chain node unreachable");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                };
                let mut blocks = lc.rpc().follow(start, 16);
                while let Some(b) = blocks.recv().await {
                    match b {
                        Ok(b) => {
                            let _ = tx.send(b.height);
                        }
                        Err(e) => tracing::warn!(error = %e, "scheduler: block stream"),
                    }
                }
            })
        };
        let pass = |claim: bool| {
            let lc = lifecycle.clone();
            let mut rx = height.clone();
            tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    let report = if claim {
                        lc.claim().await
                    } else {
                        lc.prove().await
                    };
                    super::report::log(&report);
                }
            })
        };
        Self {
            tasks: vec![follower, pass(true), pass(false)],
            height,
        }
    }

    /// The last block height seen.
    pub fn height(&self) -> i64 {
        *self.height.borrow()
    }
}
