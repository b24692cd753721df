//! Per service and supplier: relays, failures by kind, latency, tokens.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Latency buckets (seconds) of relays (time to the response head).
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0, 10.0];

#[derive(Debug, Default, Clone)]
struct Series {
    relays: u64,
    failures: BTreeMap<&'static str, u64>,
    latency_buckets: [u64; BUCKETS.len()],
    latency_count: u64,
    latency_sum: f64,
    prompt_tokens: u64,
    completion_tokens: u64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// By (service, supplier).
    series: Mutex<BTreeMap<(String, String), Series>>,
    /// Requests answered to clients, by HTTP status.
    responses: Mutex<BTreeMap<u16, u64>>,
    rate_limited: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    fn with(&self, service: &str, supplier: &str, f: impl FnOnce(&mut Series)) {
        let mut m = self.series.lock().expect("metrics lock");
        f(m.entry((service.to_string(), supplier.to_string()))
            .or_default());
    }

    pub fn success(&self, service: &str, supplier: &str, latency: Duration) {
        self.with(service, supplier, |s| {
            s.relays += 1;
            let secs = latency.as_secs_f64();
            for (i, b) in BUCKETS.iter().enumerate() {
                if secs <= *b {
                    s.latency_buckets[i] += 1;
                }
            }
            s.latency_count += 1;
            s.latency_sum += secs;
        });
    }

    pub fn failure(&self, service: &str, supplier: &str, kind: &'static str) {
        self.with(service, supplier, |s| {
            *s.failures.entry(kind).or_default() += 1;
        });
    }

    pub fn tokens(&self, service: &str, supplier: &str, prompt: u64, completion: u64) {
        self.with(service, supplier, |s| {
            s.prompt_tokens += prompt;
            s.completion_tokens += completion;
        });
    }

    pub fn response(&self, status: u16) {
        *self
            .responses
            .lock()
            .expect("metrics lock")
            .entry(status)
            .or_default() += 1;
    }

    pub fn rate_limited(&self, app: &str) {
        *self
            .rate_limited
            .lock()
            .expect("metrics lock")
            .entry(app.to_string())
            .or_default() += 1;
    }

    /// Failures of `supplier` so far (all services, all kinds).
    pub fn failures_of(&self, supplier: &str) -> u64 {
        self.series
            .lock()
            .expect("metrics lock")
            .iter()
            .filter(|((_, s), _)| s == supplier)
            .map(|(_, v)| v.failures.values().sum::<u64>())
            .sum()
    }

    /// Successful relays through `supplier` so far.
    pub fn relays_of(&self, supplier: &str) -> u64 {
        self.series
            .lock()
            .expect("metrics lock")
            .iter()
            .filter(|((_, s), _)| s == supplier)
            .map(|(_, v)| v.relays)
            .sum()
    }

    pub fn render(&self, height: i64) -> String {
        let series = self.series.lock().expect("metrics lock").clone();
        let mut body = String::from(
            "# HELP lode_gateway_relays_total Relays answered and verified, by service and supplier.\n# TYPE lode_gateway_relays_total counter\n",
        );
        for ((svc, sup), s) in &series {
            let _ = writeln!(
                body,
                "lode_gateway_relays_total{{service=\"{svc}\",supplier=\"{sup}\"}} {}",
                s.relays
            );
        }
        body.push_str("# HELP lode_gateway_relay_failures_total Failed attempts, by kind (unreachable, timeout, refused, bad_signature, malformed, engine_error).\n# TYPE lode_gateway_relay_failures_total counter\n");
        for ((svc, sup), s) in &series {
            for (kind, n) in &s.failures {
                let _ = writeln!(
                    body,
                    "lode_gateway_relay_failures_total{{service=\"{svc}\",supplier=\"{sup}\",kind=\"{kind}\"}} {n}"
                );
            }
        }
        body.push_str("# HELP lode_gateway_relay_latency_seconds Time to the supplier's response head.\n# TYPE lode_gateway_relay_latency_seconds histogram\n");
        for ((svc, sup), s) in &series {
            let labels = format!("service=\"{svc}\",supplier=\"{sup}\"");
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    body,
                    "lode_gateway_relay_latency_seconds_bucket{{{labels},le=\"{b}\"}} {}",
                    s.latency_buckets[i]
                );
            }
            let _ = writeln!(
                body,
                "lode_gateway_relay_latency_seconds_bucket{{{labels},le=\"+Inf\"}} {}\nlode_gateway_relay_latency_seconds_sum{{{labels}}} {}\nlode_gateway_relay_latency_seconds_count{{{labels}}} {}",
                s.latency_count, s.latency_sum, s.latency_count
            );
        }
        body.push_str("# HELP lode_gateway_tokens_total Tokens reported by the engines' usage.\n# TYPE lode_gateway_tokens_total counter\n");
        for ((svc, sup), s) in &series {
            let _ = writeln!(
                body,
                "lode_gateway_tokens_total{{service=\"{svc}\",supplier=\"{sup}\",kind=\"prompt\"}} {}\nlode_gateway_tokens_total{{service=\"{svc}\",supplier=\"{sup}\",kind=\"completion\"}} {}",
                s.prompt_tokens, s.completion_tokens
            );
        }
        body.push_str("# HELP lode_gateway_responses_total Responses to clients, by HTTP status.\n# TYPE lode_gateway_responses_total counter\n");
        for (status, n) in self.responses.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                body,
                "lode_gateway_responses_total{{status=\"{status}\"}} {n}"
            );
        }
        body.push_str("# HELP lode_gateway_rate_limited_total Requests refused by an application's rate limit.\n# TYPE lode_gateway_rate_limited_total counter\n");
        for (app, n) in self.rate_limited.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                body,
                "lode_gateway_rate_limited_total{{application=\"{app}\"}} {n}"
            );
        }
        let _ = writeln!(
            body,
            "# HELP lode_gateway_chain_height Last block seen.\n# TYPE lode_gateway_chain_height gauge\nlode_gateway_chain_height {height}"
        );
        body
    }
}

/// `usage` of an OpenAI response body or of SSE events: (prompt, completion) tokens.
pub fn usage(text: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(text).ok()?;
    let from = |v: &serde_json::Value| {
        let u = v.get("usage")?;
        Some((
            u.get("prompt_tokens")?.as_u64()?,
            u.get("completion_tokens")?.as_u64()?,
        ))
    };
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(s) {
        return from(&v);
    }
    s.lines()
        .rev()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .find_map(|v| from(&v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_from_bodies_and_streams() {
        assert_eq!(
            usage(br#"{"usage":{"prompt_tokens":3,"completion_tokens":12}}"#),
            Some((3, 12))
        );
        let sse = b"data: {\"choices\":[]}\n\ndata: {\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":5}}\n\ndata: [DONE]\n\n";
        assert_eq!(usage(sse), Some((2, 5)));
        assert_eq!(usage(b"data: [DONE]\n\n"), None);
    }

    #[test]
    fn exposition_has_every_family() {
        let m = Metrics::default();
        m.success("llm", "pokt1a", Duration::from_millis(3));
        m.failure("llm", "pokt1b", "bad_signature");
        m.tokens("llm", "pokt1a", 3, 12);
        m.response(200);
        let t = m.render(9);
        for line in [
            "lode_gateway_relays_total{service=\"llm\",supplier=\"pokt1a\"} 1",
            "lode_gateway_relay_failures_total{service=\"llm\",supplier=\"pokt1b\",kind=\"bad_signature\"} 1",
            "lode_gateway_relay_latency_seconds_bucket{service=\"llm\",supplier=\"pokt1a\",le=\"0.005\"} 1",
            "lode_gateway_tokens_total{service=\"llm\",supplier=\"pokt1a\",kind=\"completion\"} 12",
            "lode_gateway_responses_total{status=\"200\"} 1",
            "lode_gateway_chain_height 9",
        ] {
            assert!(t.contains(line), "{line} in\n{t}");
        }
        assert_eq!(m.failures_of("pokt1b"), 1);
        assert_eq!(m.relays_of("pokt1a"), 1);
    }
}
