//! The supplier's response signer: ECDSA nonces are made ahead of time by a background
//! thread, so signing a response on the relay path costs two scalar multiplications
//! instead of a point multiplication and an inversion (about 50 µs here).

use std::sync::{Arc, Condvar, Mutex, TryLockError, Weak};
use std::time::Duration;

use lode_kernels::crypto::SecretKey;
use lode_kernels::crypto::supplier::{self, Nonce};
use lode_kernels::proto::RelayResponse;
use lode_kernels::relay::{payload_hash, response_signable_hash};

/// Nonces kept ready: enough for a burst of about a fifth of a second at full speed.
const POOL: usize = 1024;
/// The refill thread wakes when the pool falls below this.
const LOW: usize = POOL / 2;
/// Nonces made per lock: the pool is never locked while the curve works.
const BATCH: usize = 32;

/// One supplier key and its pool of nonces.
pub struct Signer {
    key: SecretKey,
    pool: Mutex<Vec<Nonce>>,
    low: Condvar,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("address", &self.key.public_key().address())
            .field("ready", &self.ready())
            .finish()
    }
}

impl Signer {
    /// A signer whose pool a background thread keeps filled while the signer lives.
    pub fn new(key: SecretKey) -> Arc<Self> {
        let signer = Arc::new(Self::without_pool(key));
        let weak = Arc::downgrade(&signer);
        let spawned = std::thread::Builder::new()
            .name("nonce-refill".into())
            .spawn(move || refill(weak));
        if let Err(e) = spawned {
            // Signing still works, each signature making its own nonce.
            tracing::warn!(error = %e, "no thread for ECDSA nonces; signing inline");
        }
        signer
    }

    /// A signer without the background thread (every signature RFC 6979, inline).
    pub fn without_pool(key: SecretKey) -> Self {
        Self {
            key,
            pool: Mutex::new(Vec::with_capacity(POOL)),
            low: Condvar::new(),
        }
    }

    pub fn key(&self) -> &SecretKey {
        &self.key
    }

    /// Nonces ready now.
    pub fn ready(&self) -> usize {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Sets `payload_hash` and the supplier signature of a response, with a nonce from
    /// the pool (or RFC 6979 when the pool is empty or busy).
    pub fn sign(&self, res: &mut RelayResponse) {
        res.payload_hash = payload_hash(&res.payload).to_vec();
        let msg = response_signable_hash(res);
        // Never waits for the lock: the refill thread runs at idle priority, and a relay
        // must not wait for it to be scheduled again (priority inversion); it signs
        // inline instead.
        let nonce = match self.pool.try_lock() {
            Ok(mut pool) => {
                let n = pool.pop();
                // Woken once, as the pool falls below the mark (a notification is a
                // system call: not one per signature).
                if n.is_some() && pool.len() + 1 == LOW {
                    self.low.notify_one();
                }
                n
            }
            Err(TryLockError::Poisoned(e)) => e.into_inner().pop(),
            Err(TryLockError::WouldBlock) => None,
        };
        let sig = match nonce {
            Some(n) => supplier::sign_with_nonce(&self.key, &msg, n),
            None => supplier::sign(&self.key, &msg),
        };
        res.meta.supplier_operator_signature = sig.to_vec();
    }
}

/// Keeps the pool between `LOW` and `POOL` until the signer is dropped. The thread runs
/// only on otherwise idle CPU (`SCHED_IDLE`): under full load the pool runs dry and
/// responses are signed inline, as without it, instead of relays waiting behind it.
fn refill(signer: Weak<Signer>) {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    if let Err(e) = set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    ) {
        tracing::debug!(error = ?e, "nonce thread keeps the normal priority");
    }
    let mut rng = rand_core::OsRng;
    loop {
        let Some(s) = signer.upgrade() else { return };
        {
            let pool = s.pool.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() >= LOW {
                // Wakes on demand, or every second to notice the signer is gone.
                let _ = s.low.wait_timeout(pool, Duration::from_secs(1));
            }
        }
        while s.ready() < POOL {
            let batch = Nonce::batch(&mut rng, BATCH);
            s.pool
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(batch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lode_kernels::relay::verify_response;

    #[test]
    fn responses_verify_with_or_without_ready_nonces() {
        let key = SecretKey::from_secret(b"supplier");
        let public = key.public_key();
        let signer = Signer::new(key);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while signer.ready() < LOW && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(signer.ready() >= LOW, "the pool fills");
        for i in 0..(POOL + 8) {
            let mut res = RelayResponse {
                payload: format!("response {i}").into_bytes(),
                ..Default::default()
            };
            signer.sign(&mut res);
            assert!(verify_response(&res, &public), "response {i}");
        }
        let inline = Signer::without_pool(SecretKey::from_secret(b"supplier"));
        let mut res = RelayResponse {
            payload: b"no pool".to_vec(),
            ..Default::default()
        };
        inline.sign(&mut res);
        assert!(verify_response(&res, &public));
        // RFC 6979 when nothing is ready: the deterministic signature.
        let mut again = RelayResponse {
            payload: b"no pool".to_vec(),
            ..Default::default()
        };
        inline.sign(&mut again);
        assert_eq!(res, again);
    }
}
