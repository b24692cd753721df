//! Every document reads back as exactly what was written, including the values that
//! broke the operator's old `format!`-built YAML (a quote in a URL, a newline in a header
//! value, a `#` or `: ` in a name, strings YAML would otherwise read as numbers,
//! booleans or null).

use std::collections::BTreeMap;
use std::path::PathBuf;

use lode_contracts::demand::{DemandReport, ServiceDemand};
use lode_contracts::gateway::{ApplicationConfig, GatewayConfig, Routing};
use lode_contracts::report::{
    JobKind, JobReport, MAX_SUMMARY_BYTES, Outcome, SessionReport, StakeOutcome, StakeReport,
};
use lode_contracts::serve::{
    BackendKind, BasicAuth, EngineDiscovery, HoldConfig, ServeConfig, ServiceConfig, StoreConfig,
    StorePolicy,
};
use lode_contracts::stake::{RevShare, ServiceStake, StakeSpec};
use lode_contracts::store::SessionCounts;
use lode_contracts::{NodeConfig, from_json, to_json};

/// Values a hand-written YAML template gets wrong.
const AWKWARD: [&str; 10] = [
    "http://node:9090/o'hare",
    "line one\nline two",
    "a # not a comment",
    "key: value",
    "\"double\" and 'single'",
    "123",
    "true",
    "null",
    "~",
    "  padded  ",
];

fn node() -> NodeConfig {
    NodeConfig {
        grpc_url: "http://node:9090/it's".into(),
        rpc_url: "http://node:26657/?a=1&b='2'".into(),
    }
}

#[test]
fn a_serve_config_with_a_quoted_url_and_a_multi_line_header_round_trips() {
    let mut service =
        ServiceConfig::new("llm", "http://127.0.0.1:8000/o'clock", BackendKind::Openai);
    service.headers = AWKWARD
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("x-value-{i}"), v.to_string()))
        .collect();
    service
        .headers
        .insert("x-multi".into(), "first\nsecond\n  third".into());
    service.basic_auth = Some(BasicAuth {
        username: "user: name".into(),
        password: "p#ss'word\n".into(),
    });
    let mut triton = ServiceConfig::new("123", "http://127.0.0.1:8001", BackendKind::Triton);
    triton.triton_model = "null".into();
    let mut store = StoreConfig::new(
        "http://supplier-store:7070",
        "/var/run/lode/store token/'t'",
    );
    store.policy = StorePolicy::Hold;
    let mut c = ServeConfig::new(
        node(),
        store,
        vec![
            PathBuf::from("/keys/operator #1.key"),
            PathBuf::from("/keys/true"),
        ],
        vec![service, triton],
    );
    c.key_passphrase = Some("pass: 'word'\nsecond line".into());
    let yaml = c.to_yaml();
    let back = ServeConfig::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(back, c, "{yaml}");
    // Every awkward value came back as the same string.
    for (i, v) in AWKWARD.iter().enumerate() {
        assert_eq!(back.services[0].headers[&format!("x-value-{i}")], *v);
    }
    assert_eq!(back.services[1].service_id, "123");
    assert_eq!(back.chain.grpc_url, "http://node:9090/it's");

    // `serve --check` prints it without its secrets: engine headers (API keys), the
    // basic-auth password and the key passphrase.
    let shown = format!("{:#?}", c.redacted());
    for secret in ["p#ss'word", "pass: 'word'", "first\\nsecond", "o'hare"] {
        assert!(!shown.contains(secret), "{secret:?} shows in {shown}");
    }
    assert!(shown.contains("<redacted>") && shown.contains("x-value-0"));
}

#[test]
fn routes_and_limits_are_checked() {
    let service = ServiceConfig::new("llm", "http://127.0.0.1:8000", BackendKind::Openai);
    let c = ServeConfig::new(
        node(),
        StoreConfig::new("http://store:7070", "/token"),
        vec![PathBuf::from("/key")],
        vec![service],
    );
    assert_eq!(c.validate(), Ok(()));
    assert_eq!(c.services[0].routes.len(), 5, "OpenAI's inference routes");
    for bad in [
        "/v1/../admin",
        "/v1//chat",
        "v1/chat",
        "/v1/%2e%2e/x",
        "/a?b",
        "/v1/",
    ] {
        let mut c = c.clone();
        c.services[0].routes[0].path = bad.into();
        let e = c.validate().expect_err(bad).to_string();
        assert!(e.contains("route path"), "{bad}: {e}");
    }
    let mut lower = c.clone();
    lower.services[0].routes[0].method = "post".into();
    assert!(lower.validate().is_err());
    let mut tiny = c.clone();
    tiny.limits.in_flight_body_bytes = 1000;
    assert!(
        tiny.validate()
            .expect_err("a budget below one body")
            .to_string()
            .contains("in_flight_body_bytes")
    );
    let mut zero = c.clone();
    zero.limits.idle_timeout_seconds = 0;
    assert!(zero.validate().is_err());
    // Engine replicas and the router's settings.
    let mut routed = c;
    routed.services[0].engines = vec!["http://10.0.0.2:8000".into()];
    assert_eq!(routed.validate(), Ok(()));
    for (tweak, says) in [
        (
            (|s: &mut ServiceConfig| s.engines.push("unix:/x".into())) as fn(&mut ServiceConfig),
            "must be http",
        ),
        (|s| s.backend = BackendKind::Triton, "OpenAI-compatible"),
        (|s| s.routing.load_epsilon = f64::NAN, "load_epsilon"),
        (|s| s.routing.load_epsilon = -0.5, "load_epsilon"),
        (|s| s.routing.keys_per_engine = 0, "keys_per_engine"),
        (|s| s.routing.block_bytes = 8, "block_bytes"),
        (|s| s.routing.max_key_bytes = 1 << 30, "max_key_bytes"),
    ] {
        let mut c = routed.clone();
        tweak(&mut c.services[0]);
        let e = c.validate().expect_err(says).to_string();
        assert!(e.contains(says), "{says}: {e}");
    }
    let yaml = routed.to_yaml();
    assert!(yaml.contains("mode: prefix"), "{yaml}");
    assert_eq!(ServeConfig::from_yaml(&yaml).expect("parses"), routed);
    // Replicas found at run time from a Service's EndpointSlices.
    let mut found = routed.clone();
    found.services[0].discovery = Some(EngineDiscovery {
        service: "llama-engines".into(),
        namespace: "lode".into(),
        port: "engine".into(),
        period_ms: 1000,
        api_url: Some("https://10.96.0.1:443".into()),
    });
    assert_eq!(found.validate(), Ok(()));
    let yaml = found.to_yaml();
    assert_eq!(ServeConfig::from_yaml(&yaml).expect("parses"), found);
    for (tweak, says) in [
        (
            (|d: &mut EngineDiscovery| d.service = "Engines".into()) as fn(&mut EngineDiscovery),
            "discovery.service",
        ),
        (|d| d.namespace = "a/../b".into(), "discovery.namespace"),
        (|d| d.port = String::new(), "discovery.port"),
        (|d| d.period_ms = 10, "discovery.period_ms"),
        (
            |d| d.api_url = Some("10.96.0.1".into()),
            "discovery.api_url",
        ),
    ] {
        let mut c = found.clone();
        tweak(c.services[0].discovery.as_mut().expect("set"));
        let e = c.validate().expect_err(says).to_string();
        assert!(e.contains(says), "{says}: {e}");
    }
    // Relays held while no engine is found: bounded, with a deadline below the timeout.
    let mut held = found.clone();
    held.services[0].hold = Some(HoldConfig::default());
    assert_eq!(held.validate(), Ok(()));
    assert_eq!(
        ServeConfig::from_yaml(&held.to_yaml()).expect("parses"),
        held
    );
    let defaults: ServeConfig = ServeConfig::from_yaml(
        &held
            .to_yaml()
            .replace("max_relays: 256", "")
            .replace("max_bytes: 67108864", ""),
    )
    .expect("defaults");
    assert_eq!(defaults, held, "unset bounds take their defaults");
    for (tweak, says) in [
        (
            (|h: &mut HoldConfig| h.max_relays = 0) as fn(&mut HoldConfig),
            "hold.max_relays",
        ),
        (|h| h.max_bytes = 0, "hold.max_bytes"),
        (|h| h.deadline_ms = 10, "hold.deadline_ms"),
        (|h| h.deadline_ms = 600_000, "below request_timeout_seconds"),
    ] {
        let mut c = held.clone();
        tweak(c.services[0].hold.as_mut().expect("set"));
        let e = c.validate().expect_err(says).to_string();
        assert!(e.contains(says), "{says}: {e}");
    }
    let mut undiscovered = held.clone();
    undiscovered.services[0].discovery = None;
    let e = undiscovered
        .validate()
        .expect_err("no discovery")
        .to_string();
    assert!(e.contains("hold needs discovery"), "{e}");
    found.services[0].engines.clear();
    found.services[0].backend = BackendKind::Triton;
    let e = found.validate().expect_err("triton").to_string();
    assert!(e.contains("OpenAI-compatible"), "{e}");
}

#[test]
fn a_gateway_config_with_awkward_model_names_round_trips() {
    let models: BTreeMap<String, String> = AWKWARD
        .iter()
        .enumerate()
        .map(|(i, m)| (m.to_string(), format!("svc-{i}")))
        .collect();
    let mut app = ApplicationConfig::new("pokt1dqkvq3mfz8nccuy2qx228u9lshdn908mhjg7jg");
    // Keys are header-safe (printable ASCII); YAML's special characters still round-trip.
    app.api_keys = vec!["sk-'quoted'".into(), "k:#{x}&*|\"!%@`".into()];
    app.api_keys_file = Some("/keys/app 'a'".into());
    app.requests_per_second = Some(2.5);
    let mut c = GatewayConfig::new(node(), "/keys/gateway 'key'", vec![app], models);
    c.routing = Routing::RoundRobin;
    let yaml = c.to_yaml();
    let back = GatewayConfig::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(back, c, "{yaml}");
    assert_eq!(back.models["line one\nline two"], "svc-1");
}

#[test]
fn documents_are_refused_with_the_reason() {
    // Unknown keys, in any document that crosses a boundary.
    let mut yaml = GatewayConfig::new(
        node(),
        "/k",
        vec![ApplicationConfig::new("pokt1a")],
        BTreeMap::from([("m".to_string(), "llm".to_string())]),
    )
    .to_yaml();
    yaml.push_str("bogus: 1\n");
    let e = GatewayConfig::from_yaml(&yaml).expect_err("unknown key");
    assert!(e.0.contains("bogus"), "{e}");
    let e = StakeSpec::from_json(
        r#"{"operator":"pokt1o","owner":"pokt1o","stake_upokt":"1","services":[],"x":1}"#,
    )
    .expect_err("unknown key");
    assert!(e.0.contains('x'), "{e}");
    // A serve config a reader would accept only if it can run.
    let c = ServeConfig::new(node(), StoreConfig::new("http://s", "/t"), vec![], vec![]);
    assert_eq!(
        ServeConfig::from_yaml(&c.to_yaml())
            .expect_err("no service")
            .0,
        "at least one service is required"
    );
}

fn spec() -> StakeSpec {
    StakeSpec {
        operator: "pokt1op".into(),
        owner: "pokt1owner".into(),
        stake_upokt: u128::from(u64::MAX) * 1_000,
        services: vec![ServiceStake {
            service_id: "llm".into(),
            url: "https://relay.example.com/o'k?x=\"y\"".into(),
            rev_share: vec![
                RevShare {
                    address: "pokt1a".into(),
                    percent: 60,
                },
                RevShare {
                    address: "pokt1b".into(),
                    percent: 40,
                },
            ],
        }],
    }
}

#[test]
fn a_stake_spec_round_trips_with_its_stake_as_a_decimal_string() {
    let s = spec();
    let json = s.to_json();
    assert!(
        json.contains(r#""stake_upokt":"18446744073709551615000""#),
        "{json}"
    );
    assert_eq!(StakeSpec::from_json(&json).expect("valid"), s);
    let mut bad = spec();
    bad.services[0].rev_share[1].percent = 30;
    let e = StakeSpec::from_json(&bad.to_json()).expect_err("90%");
    assert!(e.0.contains("add up to 90%"), "{e}");
    let mut bad = spec();
    bad.services[0].url = "relay.example.com".into();
    assert!(StakeSpec::from_json(&bad.to_json()).is_err());
    let e = StakeSpec::from_json(
        &spec()
            .to_json()
            .replace("\"18446744073709551615000\"", "\"lots\""),
    )
    .expect_err("not a number");
    assert!(e.0.contains("not a whole number"), "{e}");
}

fn session(end: i64, outcome: Outcome) -> SessionReport {
    SessionReport {
        supplier: "pokt1s".into(),
        session_id: format!("session-{end}"),
        service_id: "llm".into(),
        application: "pokt1app".into(),
        session_end_height: end,
        relays: 7,
        compute_units: 70,
        root: "ab".repeat(48),
        estimated_reward_upokt: Some(u128::MAX),
        proof: Some("threshold".into()),
        tx_hash: Some(format!("TX{end}")),
        outcome,
        detail: "in block 12 (fee 3 uPOKT)".into(),
    }
}

#[test]
fn job_reports_and_stake_reports_round_trip() {
    let mut r = JobReport::new(JobKind::Prove);
    r.height = 42;
    r.sessions = vec![session(20, Outcome::Proven), session(30, Outcome::NotYet)];
    r.errors = vec!["chain down".into()];
    let back: JobReport = from_json(&to_json(&r)).expect("json");
    assert_eq!(back, r);
    let s = StakeReport {
        operator: "pokt1op".into(),
        outcome: StakeOutcome::Staked,
        tx_hash: Some("AB".into()),
        height: Some(9),
    };
    assert_eq!(from_json::<StakeReport>(&to_json(&s)).expect("json"), s);
    assert!(to_json(&s).contains(r#""outcome":"staked""#));
}

#[test]
fn the_status_summary_names_the_latest_session_acted_on_and_always_fits() {
    let mut r = JobReport::new(JobKind::Claim);
    r.height = 22;
    r.sessions = vec![
        session(10, Outcome::Claimed),
        session(20, Outcome::Claimed),
        session(20, Outcome::Unprofitable),
        session(30, Outcome::NotYet),
    ];
    let s = r.status_summary();
    let latest = s.latest.clone().expect("acted on sessions");
    assert_eq!(
        (
            latest.session_end_height,
            latest.outcome,
            latest.tx_hash.as_deref()
        ),
        (20, Outcome::Claimed, Some("TX20")),
        "the first of the latest sessions; the one not yet due is left out"
    );
    assert_eq!(s.more_sessions, 2);
    assert_eq!(s.outcomes[&Outcome::NotYet], 1);
    assert_eq!(
        from_json::<lode_contracts::report::JobSummary>(&to_json(&s)).expect("json"),
        s
    );

    // A pass over a thousand sessions with long errors still fits Kubernetes' 4096 bytes.
    r.sessions = (0..1_000).map(|i| session(i, Outcome::Failed)).collect();
    r.errors = (0..50)
        .map(|i| format!("error {i}: {}", "é".repeat(5_000)))
        .collect();
    let json = to_json(&r.status_summary());
    assert!(json.len() <= MAX_SUMMARY_BYTES, "{} bytes", json.len());
    assert!(
        to_json(&r).len() > 100 * MAX_SUMMARY_BYTES,
        "the full report does not"
    );

    // A pass that acted on nothing.
    let empty = JobReport::new(JobKind::Claim).status_summary();
    assert_eq!((empty.latest, empty.more_sessions), (None, 0));
}

#[test]
fn demand_and_session_counts_round_trip() {
    let d = DemandReport {
        height: 12,
        services: vec![ServiceDemand {
            service_id: "llm".into(),
            in_flight: 3,
            held: 2,
            waking: true,
            queued: 1,
            relays_per_second: 2.5,
            prompt_tokens_per_second: 10.0,
            completion_tokens_per_second: 120.25,
            prefix_prompt_bytes: 4096,
            prefix_matched_bytes: 1024,
        }],
    };
    assert_eq!(from_json::<DemandReport>(&to_json(&d)).expect("json"), d);
    // A report from a serve without a router's counters still reads.
    let old: DemandReport = from_json(
        r#"{"height":1,"services":[{"service_id":"llm","in_flight":0,"queued":0,"relays_per_second":0.0,"prompt_tokens_per_second":0.0,"completion_tokens_per_second":0.0}]}"#,
    )
    .expect("json");
    assert_eq!(old.services[0].prefix_prompt_bytes, 0);
    let c = SessionCounts {
        sessions: BTreeMap::from([
            ("open".to_string(), 2),
            ("claimed".to_string(), 1),
            ("settled".to_string(), 5),
        ]),
    };
    assert_eq!(from_json::<SessionCounts>(&to_json(&c)).expect("json"), c);
    assert_eq!(c.in_flight(), 3);
}
