//! The engines' own signals, from each ready engine pod's `/metrics` (Prometheus text):
//! requests waiting and KV-cache use, whichever the engine reports.
//!
//! | engine | waiting | KV-cache use |
//! | --- | --- | --- |
//! | vLLM (and engine-sim) | `vllm:num_requests_waiting` | `vllm:kv_cache_usage_perc` (`vllm:gpu_cache_usage_perc` before V1), 0 to 1 |
//! | llama.cpp | `llamacpp:requests_deferred` | not reported |
//! | Triton, TensorRT-LLM | `nv_inference_pending_request_count` | `nv_trt_llm_kv_cache_block_metrics` used ÷ max blocks |
//!
//! Series with several label sets are summed (waiting, blocks) or their largest taken
//! (use). A page is read within [`METRICS_TIMEOUT`] and [`MAX_METRICS_BYTES`]; a value
//! that is not a finite number ≥ 0 is ignored and use is clamped to 0..1. An engine
//! whose page cannot be read is left out of the means: the others still decide.

use std::time::Duration;

use super::decide::EngineLoad;

/// The largest `/metrics` page read from an engine.
pub const MAX_METRICS_BYTES: usize = 2 << 20;
/// The longest wait for one.
pub const METRICS_TIMEOUT: Duration = Duration::from_secs(2);

/// What one engine reported.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EngineSample {
    pub waiting: Option<f64>,
    pub kv_usage: Option<f64>,
}

/// One sample line: its metric name, its labels' text and its value.
fn lines(text: &str) -> impl Iterator<Item = (&str, &str, f64)> {
    text.lines().filter_map(|l| {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            return None;
        }
        let (series, rest) = match l.find('{') {
            Some(i) => {
                let close = l[i..].find('}')? + i;
                (&l[..close + 1], &l[close + 1..])
            }
            None => l.split_at(l.find(char::is_whitespace)?),
        };
        let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
        let (name, labels) = match series.find('{') {
            Some(i) => (&series[..i], &series[i..]),
            None => (series, ""),
        };
        (value.is_finite() && value >= 0.0).then_some((name, labels, value))
    })
}

/// The signals in one engine's `/metrics` page.
pub fn parse(text: &str) -> EngineSample {
    let (mut waiting, mut usage): (Option<f64>, Option<f64>) = (None, None);
    let (mut used, mut max) = (None::<f64>, None::<f64>);
    let add = |slot: &mut Option<f64>, v: f64| *slot = Some(slot.unwrap_or(0.0) + v);
    for (name, labels, v) in lines(text) {
        match name {
            "vllm:num_requests_waiting"
            | "llamacpp:requests_deferred"
            | "nv_inference_pending_request_count" => add(&mut waiting, v),
            "vllm:kv_cache_usage_perc" | "vllm:gpu_cache_usage_perc" => {
                usage = Some(usage.map_or(v, |u| u.max(v)));
            }
            "nv_trt_llm_kv_cache_block_metrics" => {
                if labels.contains("kv_cache_block_type=\"used\"") {
                    add(&mut used, v);
                } else if labels.contains("kv_cache_block_type=\"max\"") {
                    add(&mut max, v);
                }
            }
            _ => {}
        }
    }
    if usage.is_none()
        && let (Some(u), Some(m)) = (used, max)
        && m > 0.0
    {
        usage = Some(u / m);
    }
    EngineSample {
        waiting,
        kv_usage: usage.map(|u| u.clamp(0.0, 1.0)),
    }
}

/// The engines' load over `ready` engines from the samples read (`None`: a page that
/// could not be read, left out).
pub fn combine(ready: u32, samples: &[Option<EngineSample>]) -> EngineLoad {
    let mean = |f: fn(&EngineSample) -> Option<f64>| {
        let v: Vec<f64> = samples.iter().flatten().filter_map(f).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    EngineLoad {
        ready,
        waiting: mean(|s| s.waiting),
        kv_usage: mean(|s| s.kv_usage),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_engines_signals_are_read() {
        let vllm = "# HELP vllm:num_requests_waiting Requests waiting.\n\
            # TYPE vllm:num_requests_waiting gauge\n\
            vllm:num_requests_waiting{model_name=\"a\"} 3.0\n\
            vllm:num_requests_waiting{model_name=\"b\"} 2\n\
            vllm:kv_cache_usage_perc{model_name=\"a\"} 0.25\n\
            vllm:kv_cache_usage_perc{model_name=\"b\"} 0.5\n\
            vllm:num_requests_running{model_name=\"a\"} 9\n";
        assert_eq!(
            parse(vllm),
            EngineSample {
                waiting: Some(5.0),
                kv_usage: Some(0.5)
            }
        );
        let old_vllm = "vllm:gpu_cache_usage_perc{model_name=\"a\"} 0.9\n";
        assert_eq!(parse(old_vllm).kv_usage, Some(0.9));
        let llamacpp = "llamacpp:requests_processing 1\nllamacpp:requests_deferred 4\n";
        assert_eq!(
            parse(llamacpp),
            EngineSample {
                waiting: Some(4.0),
                kv_usage: None
            }
        );
        let triton = "nv_inference_pending_request_count{model=\"ensemble\",version=\"1\"} 6\n\
            nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"max\",model=\"tensorrt_llm\",version=\"1\"} 400\n\
            nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"used\",model=\"tensorrt_llm\",version=\"1\"} 300\n\
            nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"free\",model=\"tensorrt_llm\",version=\"1\"} 100\n";
        assert_eq!(
            parse(triton),
            EngineSample {
                waiting: Some(6.0),
                kv_usage: Some(0.75)
            }
        );
        assert_eq!(parse("up 1\n"), EngineSample::default());
    }

    /// What a broken or hostile engine could send: never a panic, never a signal that
    /// is not a finite number ≥ 0, use within 0..1.
    #[test]
    fn garbage_pages_give_no_absurd_signal() {
        for page in [
            "vllm:num_requests_waiting NaN\nvllm:kv_cache_usage_perc +Inf\n",
            "vllm:num_requests_waiting -5\n",
            "vllm:num_requests_waiting{model_name=\"a\" 3\n",
            "vllm:num_requests_waiting\n{}{{}} }{\n\u{0}\u{ff}",
            "",
        ] {
            assert_eq!(parse(page), EngineSample::default(), "{page:?}");
        }
        assert_eq!(
            parse("vllm:kv_cache_usage_perc 7.5\n").kv_usage,
            Some(1.0),
            "clamped"
        );
        assert_eq!(
            parse("vllm:num_requests_waiting 1e300\nvllm:num_requests_waiting 1e300\n").waiting,
            Some(2e300)
        );
    }

    #[test]
    fn an_engine_that_cannot_be_read_is_left_out() {
        let a = EngineSample {
            waiting: Some(4.0),
            kv_usage: Some(0.9),
        };
        let b = EngineSample {
            waiting: Some(2.0),
            kv_usage: None,
        };
        let load = combine(3, &[Some(a), None, Some(b)]);
        assert_eq!(load.ready, 3);
        assert_eq!(load.waiting, Some(3.0));
        assert_eq!(load.kv_usage, Some(0.9));
        assert_eq!(combine(2, &[None, None]).waiting, None);
    }
}
