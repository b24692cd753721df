//! Streaming responses: the engine's chunks relayed as signed batches (the first at
//! once, later ones every `stream_batch_ms` or `stream_batch_bytes`), the relay mined
//! from the whole body once the engine finishes.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use lode_kernels::proto::{Header, Message};
use lode_kernels::relay::STREAM_DELIMITER;
use tokio::sync::mpsc;

use super::config::StorePolicy;
use super::proxy::{Ctx, signed, usage_of};
use super::relay::{ChunkStream, Service};

impl Ctx {
    /// Streams the backend's chunks as signed batches: the first at once, later ones
    /// every `stream_batch_ms` or `stream_batch_bytes`; the relay mined from the whole
    /// body once the backend finishes.
    pub(super) async fn stream(
        self,
        service: &Service,
        status: u32,
        headers: BTreeMap<String, Header>,
        mut body: ChunkStream,
        deadline: tokio::time::Instant,
        content_type: HeaderValue,
    ) -> Response {
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let metrics = service.metrics.clone();
        let interval = self.state.config.stream_batch_interval();
        let max_pending = self.state.config.stream_batch_bytes;
        let header_for_batches = self.session.header.clone();
        let key = self.key.clone();
        let policy = self.state.config.store.policy;
        let batch = move |first: bool,
                          status: u32,
                          headers: &BTreeMap<String, Header>,
                          chunk: &[u8]|
              -> Bytes {
            let batch_headers = if first {
                headers.clone()
            } else {
                BTreeMap::new()
            };
            let res = signed(
                status,
                batch_headers,
                chunk.to_vec(),
                &header_for_batches,
                &key,
            );
            let mut out = Vec::with_capacity(res.encoded_len() + STREAM_DELIMITER.len());
            if !first {
                out.extend_from_slice(STREAM_DELIMITER);
            }
            res.encode_to(&mut out);
            Bytes::from(out)
        };
        // With `policy: hold` the newest chunk stays back until the store acknowledged
        // the relay (it carries the end of the stream, `data: [DONE]`), so a client
        // holds a complete stream only of a relay the supplier will be paid for.
        let hold = policy == StorePolicy::Hold;
        // The whole response is kept to be mined: at most the service's body limit.
        let max_full = service.config.max_body_bytes;
        tokio::spawn(async move {
            // Every send ends at the deadline: a gateway that stopped reading holds the
            // engine request, the queue slot and the stream's bytes no longer than that.
            let send = |b: Result<Bytes, std::io::Error>| {
                let tx = tx.clone();
                async move {
                    matches!(
                        tokio::time::timeout_at(deadline, tx.send(b)).await,
                        Ok(Ok(()))
                    )
                }
            };
            let mut full: Vec<u8> = Vec::new();
            let mut pending: Vec<u8> = Vec::new();
            // Bytes at the end of `pending` held back (the newest chunk, under `hold`).
            let mut held = 0usize;
            let mut sent_first = false;
            let mut aborted = false;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    frame = futures_util::StreamExt::next(&mut body) => match frame {
                        Some(Ok(data)) => {
                            if full.len() + data.len() > max_full {
                                tracing::warn!(limit = max_full, "the engine's stream exceeds the body limit");
                                let _ = tx.try_send(Err(std::io::Error::other("the engine's stream exceeds the body limit")));
                                aborted = true;
                                break;
                            }
                            full.extend_from_slice(&data);
                            if !sent_first {
                                sent_first = true;
                                if !send(Ok(batch(true, status, &headers, &data))).await { aborted = true; break; }
                            } else {
                                pending.extend_from_slice(&data);
                                if hold { held = data.len(); }
                                if pending.len() - held >= max_pending {
                                    let n = pending.len() - held;
                                    let b = batch(false, status, &headers, &pending[..n]);
                                    pending.drain(..n);
                                    if !send(Ok(b)).await { aborted = true; break; }
                                }
                            }
                        }
                        Some(Err(e)) => {
                            // The engine died or dropped the connection mid-stream: the
                            // gateway's stream breaks too (it must not end as if complete).
                            tracing::warn!(error = %e, "backend stream broke");
                            send(Err(std::io::Error::other("the engine's stream broke off"))).await;
                            aborted = true;
                            break;
                        }
                        None => break,
                    },
                    _ = tick.tick(), if pending.len() > held => {
                        let n = pending.len() - held;
                        let b = batch(false, status, &headers, &pending[..n]);
                        pending.drain(..n);
                        if !send(Ok(b)).await { aborted = true; break; }
                    }
                    _ = tokio::time::sleep_until(deadline) => {
                        tracing::warn!("stream exceeded the request timeout");
                        let _ = tx.try_send(Err(std::io::Error::other("the stream exceeded the request timeout")));
                        aborted = true;
                        break;
                    }
                    _ = tx.closed() => { aborted = true; break; }
                }
            }
            if aborted {
                // The gateway did not get the whole response: nothing to mine.
                metrics.aborted.fetch_add(1, Ordering::Relaxed);
                drop(self);
                return;
            }
            if let Some((p, c)) = usage_of(&full) {
                metrics.prompt_tokens.fetch_add(p, Ordering::Relaxed);
                metrics.completion_tokens.fetch_add(c, Ordering::Relaxed);
            }
            // What is left to send: the rest, or for an empty stream one batch with the
            // status and headers.
            let last = if !sent_first {
                Some(batch(true, status, &headers, &[]))
            } else {
                (!pending.is_empty()).then(|| batch(false, status, &headers, &pending))
            };
            // The relay that is mined: the whole response, signed.
            let res = signed(status, headers, full, &self.session.header, &self.key);
            if hold {
                if let Some(ack) = self.finish(&metrics, status, &res)
                    && !matches!(tokio::time::timeout_at(deadline, ack).await, Ok(Ok(())))
                {
                    // Not acknowledged (the store refused it: its session is already
                    // being claimed): the stream breaks instead of completing.
                    send(Err(std::io::Error::other(
                        "the store did not acknowledge the relay",
                    )))
                    .await;
                    return;
                }
                if let Some(b) = last {
                    send(Ok(b)).await;
                }
            } else {
                if let Some(b) = last
                    && !send(Ok(b)).await
                    && sent_first
                {
                    // The gateway left before the end: nothing to mine.
                    metrics.aborted.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                self.finish(&metrics, status, &res);
            }
            drop(tx);
        });
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Body::from_stream(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ))
            .expect("static response")
    }
}
