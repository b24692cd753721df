//! The claim and prove Jobs the window scheduler starts, and when it starts them.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use lode_crds::Supplier;

use super::supplier::token_secret_name;
use super::{
    BuildError, Images, STORE_TOKEN_KEY, SUPPLIER_LABEL, child_meta, labels, locked_down, mount,
    name_of, paths, pod_security, secret_volume, store_url,
};

/// Which window a Job works in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Window {
    Claim,
    Prove,
}

impl Window {
    pub fn command(self) -> &'static str {
        match self {
            Self::Claim => super::component::CLAIM,
            Self::Prove => super::component::PROVE,
        }
    }
}

/// The Job's name: one per supplier, window and opening height, so a second scheduler
/// pass (or a restarted operator) finds the existing Job instead of starting another.
pub fn job_name(supplier: &str, window: Window, open_height: i64) -> String {
    format!("{supplier}-{}-{open_height}", window.command())
}

/// A Job running `relayminer <args>` for supplier `s` with `env`; the key Secret and the
/// store token are mounted (only these Jobs and serve pods see the key).
fn relayminer_job(
    s: &Supplier,
    job: String,
    component: &str,
    args: Vec<String>,
    env: Vec<(&str, String)>,
    annotations: BTreeMap<String, String>,
    images: &Images,
) -> Result<Job, BuildError> {
    let name = name_of(s);
    let spec = &s.spec;
    let mut labels = labels(&name, component);
    labels.insert(SUPPLIER_LABEL.into(), name.clone());
    let mut env: Vec<EnvVar> = env
        .into_iter()
        .chain([("LODE_LOG_JSON", "true".to_string())])
        .map(|(k, v)| EnvVar {
            name: k.into(),
            value: Some(v),
            ..EnvVar::default()
        })
        .collect();
    if let Some(p) = &spec.key_passphrase_secret_ref {
        env.push(EnvVar {
            name: "LODE_KEY_PASSPHRASE".into(),
            value_from: Some(k8s_openapi::api::core::v1::EnvVarSource {
                secret_key_ref: Some(k8s_openapi::api::core::v1::SecretKeySelector {
                    name: p.name.clone(),
                    key: p.key.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..EnvVar::default()
        });
    }
    let mut meta = child_meta(s, job, labels.clone())?;
    meta.annotations = Some(annotations);
    Ok(Job {
        metadata: meta,
        spec: Some(JobSpec {
            backoff_limit: Some(spec.jobs.backoff_limit),
            ttl_seconds_after_finished: Some(24 * 3600),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    containers: vec![Container {
                        name: component.into(),
                        image: Some(images.relayminer.clone()),
                        args: Some(args),
                        env: Some(env),
                        security_context: Some(locked_down()),
                        volume_mounts: Some(vec![
                            mount("keys", paths::KEYS),
                            mount("store-token", paths::STORE_TOKEN),
                            mount("store-ca", paths::STORE_CA),
                        ]),
                        termination_message_policy: Some("FallbackToLogsOnError".into()),
                        ..Container::default()
                    }],
                    volumes: Some(vec![
                        secret_volume(
                            "keys",
                            &spec.key_secret_ref.name,
                            &spec.key_secret_ref.key,
                            0o440,
                        ),
                        secret_volume(
                            "store-token",
                            &token_secret_name(&name),
                            STORE_TOKEN_KEY,
                            0o440,
                        ),
                        super::store_ca_volume(&name),
                    ]),
                    security_context: Some(pod_security()),
                    automount_service_account_token: Some(false),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    })
}

/// A `relayminer claim` or `relayminer prove` Job for the window opening at
/// `open_height`.
pub fn window_job(
    s: &Supplier,
    window: Window,
    open_height: i64,
    images: &Images,
) -> Result<Job, BuildError> {
    let name = name_of(s);
    let spec = &s.spec;
    let mut env = vec![
        ("LODE_CHAIN_GRPC", spec.chain.grpc_url.clone()),
        ("LODE_CHAIN_RPC", spec.chain.rpc_url.clone()),
        ("LODE_CHAIN_ID", spec.chain.chain_id.clone()),
        ("LODE_STORE_URL", store_url(&name)),
        ("LODE_STORE_CA_FILE", super::store_ca_file()),
        (
            "LODE_STORE_TOKEN_FILE",
            format!("{}/{STORE_TOKEN_KEY}", paths::STORE_TOKEN),
        ),
        (
            "LODE_KEY_FILES",
            format!("{}/{}", paths::KEYS, spec.key_secret_ref.key),
        ),
        ("LODE_REPORT_FILE", "/dev/termination-log".into()),
    ];
    env.extend(fee_env(&spec.jobs)?);
    relayminer_job(
        s,
        job_name(&name, window, open_height),
        window.command(),
        vec![window.command().into()],
        env,
        BTreeMap::from([(
            "lode.pokt.network/window-open-height".to_string(),
            open_height.to_string(),
        )]),
        images,
    )
}

/// The `relayminer unstake` Job run when a Supplier with `unstakeOnDelete` is deleted.
/// It has no owner reference: its owner is on its way out, and the Job must outlive
/// the garbage collection of the Supplier's other children only until it finished.
pub fn unstake_job(s: &Supplier, images: &Images) -> Result<Job, BuildError> {
    let name = name_of(s);
    let mut job = relayminer_job(
        s,
        format!("{name}-unstake"),
        super::component::STAKE,
        vec!["unstake".into()],
        [
            ("LODE_CHAIN_GRPC", s.spec.chain.grpc_url.clone()),
            ("LODE_CHAIN_RPC", s.spec.chain.rpc_url.clone()),
            ("LODE_CHAIN_ID", s.spec.chain.chain_id.clone()),
            (
                "LODE_KEY_FILE",
                format!("{}/{}", paths::KEYS, s.spec.key_secret_ref.key),
            ),
        ]
        .into_iter()
        .chain(fee_env(&s.spec.jobs)?)
        .collect(),
        BTreeMap::new(),
        images,
    )?;
    job.metadata.owner_references = None;
    Ok(job)
}

/// The `relayminer stake` Job that makes the chain match the Supplier's spec, which it
/// gets whole (`LODE_STAKE_SPEC`, JSON). Its name carries a hash of that spec: one Job
/// per wanted state.
pub fn stake_job(s: &Supplier, images: &Images) -> Result<Job, BuildError> {
    let want = crate::validate::stake_spec(s)?.to_json();
    let name = name_of(s);
    let digest = {
        use sha2::Digest;
        let h = sha2::Sha256::digest(want.as_bytes());
        h[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let env = vec![
        ("LODE_CHAIN_GRPC", s.spec.chain.grpc_url.clone()),
        ("LODE_CHAIN_RPC", s.spec.chain.rpc_url.clone()),
        ("LODE_CHAIN_ID", s.spec.chain.chain_id.clone()),
        (
            "LODE_KEY_FILE",
            format!("{}/{}", paths::KEYS, s.spec.key_secret_ref.key),
        ),
        ("LODE_STAKE_SPEC", want),
    ];
    let env = env.into_iter().chain(fee_env(&s.spec.jobs)?).collect();
    relayminer_job(
        s,
        format!("{name}-stake-{digest}"),
        super::component::STAKE,
        vec!["stake".into()],
        env,
        BTreeMap::new(),
        images,
    )
}

/// What the Supplier's `jobs` settings say a transaction may cost, as the relayminer's
/// environment (unset ones keep the relayminer's defaults). A value the relayminer would
/// refuse is refused here, with the field's name.
fn fee_env(jobs: &lode_crds::JobSettings) -> Result<Vec<(&'static str, String)>, BuildError> {
    let rate = |v: &str| v.parse::<f64>().is_ok_and(|x| x.is_finite() && x >= 0.0);
    let mut env = Vec::new();
    // (variable, field, value, whether it is a rate: a finite non-negative decimal; else
    // a whole uPOKT amount)
    let checked = [
        (
            "LODE_GAS_ADJUSTMENT",
            "gasAdjustment",
            &jobs.gas_adjustment,
            true,
        ),
        ("LODE_GAS_PRICE", "gasPrice", &jobs.gas_price, true),
        (
            "LODE_MAX_FEE_UPOKT",
            "maxFeeUpokt",
            &jobs.max_fee_upokt,
            false,
        ),
    ];
    for (var, field, value, is_rate) in checked {
        let Some(v) = value else { continue };
        let valid = if is_rate {
            rate(v)
        } else {
            v.parse::<u128>().is_ok()
        };
        if !valid {
            return Err(BuildError::Invalid(format!(
                "jobs.{field} {v:?} is not a valid number"
            )));
        }
        env.push((var, v.clone()));
    }
    Ok(env)
}

/// The windows open at `height` for sessions ending at or before it, as (window, open
/// height) pairs: what the scheduler must have a Job for. `windows_of(end)` gives a
/// session's (claim open, claim close, proof open, proof close); `ends` are the session
/// end heights still within reach.
pub fn due(
    height: i64,
    ends: impl IntoIterator<Item = i64>,
    windows_of: impl Fn(i64) -> (i64, i64, i64, i64),
) -> Vec<(Window, i64)> {
    let mut out = std::collections::BTreeSet::new();
    for end in ends {
        let (claim_open, claim_close, proof_open, proof_close) = windows_of(end);
        if (claim_open..=claim_close).contains(&height) {
            out.insert((Window::Claim, claim_open));
        }
        if (proof_open..=proof_close).contains(&height) {
            out.insert((Window::Prove, proof_open));
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::sample_supplier;

    /// A container's literal environment.
    fn env_of(c: &Container) -> BTreeMap<String, String> {
        c.env
            .clone()
            .expect("env")
            .into_iter()
            .filter_map(|e| e.value.map(|v| (e.name, v)))
            .collect()
    }

    #[test]
    fn a_claim_job_has_the_key_the_store_and_the_report_path() {
        let s = sample_supplier();
        let j = window_job(&s, Window::Claim, 22, &Images::default()).expect("builds");
        assert_eq!(j.metadata.name.as_deref(), Some("supplier-1-claim-22"));
        let spec = j.spec.expect("spec");
        assert_eq!(spec.backoff_limit, Some(3));
        let pod = spec.template.spec.expect("pod");
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let c = &pod.containers[0];
        assert_eq!(c.args, Some(vec!["claim".to_string()]));
        let env = env_of(c);
        assert_eq!(env["LODE_STORE_URL"], "https://supplier-1-store:7070");
        assert_eq!(env["LODE_STORE_CA_FILE"], "/var/run/lode/store-ca/ca.crt");
        let ca = pod
            .volumes
            .clone()
            .expect("volumes")
            .into_iter()
            .find(|v| v.name == "store-ca")
            .expect("the store's CA");
        let ca = ca.secret.expect("a Secret");
        assert_eq!(ca.secret_name.as_deref(), Some("supplier-1-store-tls"));
        assert_eq!(
            ca.items.expect("items")[0].key,
            "ca.crt",
            "the CA only, not the key"
        );
        assert_eq!(env["LODE_KEY_FILES"], "/var/run/lode/keys/operator.key");
        assert_eq!(env["LODE_CHAIN_ID"], "pocket");
        assert_eq!(env["LODE_REPORT_FILE"], "/dev/termination-log");
        let labels = spec.template.metadata.expect("m").labels.expect("l");
        assert_eq!(
            labels["app.kubernetes.io/component"], "claim",
            "the store lets it in"
        );
        assert_eq!(labels[SUPPLIER_LABEL], "supplier-1");
    }

    #[test]
    fn every_transaction_job_gets_the_fee_settings_and_bad_ones_are_refused() {
        let mut s = sample_supplier();
        s.spec.jobs.max_fee_upokt = Some("2500000".into());
        s.spec.jobs.gas_price = Some("0.0002".into());
        let images = Images::default();
        for j in [
            window_job(&s, Window::Claim, 22, &images).expect("claim"),
            window_job(&s, Window::Prove, 26, &images).expect("proof"),
            stake_job(&s, &images).expect("stake"),
            unstake_job(&s, &images).expect("unstake"),
        ] {
            let pod = j.spec.expect("spec").template.spec.expect("pod");
            let env = env_of(&pod.containers[0]);
            assert_eq!(env["LODE_MAX_FEE_UPOKT"], "2500000");
            assert_eq!(env["LODE_GAS_PRICE"], "0.0002");
            assert!(
                !env.contains_key("LODE_GAS_ADJUSTMENT"),
                "unset: the default"
            );
        }
        for bad in ["-1", "1e30", "lots"] {
            s.spec.jobs.max_fee_upokt = Some(bad.into());
            let e = stake_job(&s, &images).expect_err(bad).to_string();
            assert!(e.contains("jobs.maxFeeUpokt"), "{e}");
        }
        s.spec.jobs.max_fee_upokt = None;
        s.spec.jobs.gas_price = Some("NaN".into());
        assert!(window_job(&s, Window::Claim, 22, &images).is_err());
    }

    #[test]
    fn the_stake_job_carries_the_wanted_state_and_is_named_by_it() {
        let mut s = sample_supplier();
        let j = stake_job(&s, &Images::default()).expect("builds");
        let name = j.metadata.name.clone().expect("name");
        assert!(name.starts_with("supplier-1-stake-"), "{name}");
        let c = &j.spec.expect("spec").template.spec.expect("pod").containers[0];
        assert_eq!(c.args, Some(vec!["stake".to_string()]));
        let env = env_of(c);
        let spec = lode_contracts::stake::StakeSpec::from_json(&env["LODE_STAKE_SPEC"])
            .expect("relayminer reads it");
        assert_eq!(spec, crate::validate::stake_spec(&s).expect("valid"));
        assert_eq!(
            (
                spec.services[0].service_id.as_str(),
                spec.services[0].url.as_str()
            ),
            ("llm", "https://relay.example.com")
        );
        assert_eq!(spec.stake_upokt, 100_000_000);
        // Another wanted state, another Job.
        s.spec.stake_upokt = "200000000".into();
        let other = stake_job(&s, &Images::default()).expect("builds");
        assert_ne!(other.metadata.name, Some(name));
        s.spec.services[0]
            .rev_share_percent
            .insert("pokt1x".into(), 60);
        assert!(
            matches!(crate::validate::stake_spec(&s), Err(BuildError::Invalid(m)) if m.contains("adds up to 60"))
        );
    }

    #[test]
    fn windows_come_due_once_each() {
        // Default params: claim [E+2, E+6], proof [E+6, E+10].
        let w = |e: i64| (e + 2, e + 6, e + 6, e + 10);
        assert_eq!(due(11, [10], w), vec![]);
        assert_eq!(due(12, [10], w), vec![(Window::Claim, 12)]);
        assert_eq!(
            due(16, [10], w),
            vec![(Window::Claim, 12), (Window::Prove, 16)]
        );
        assert_eq!(
            due(22, [10, 20], w),
            vec![(Window::Claim, 22)],
            "session 10's proof window closed at 20"
        );
        assert_eq!(
            due(20, [10, 10], w),
            vec![(Window::Prove, 16)],
            "deduplicated"
        );
    }
}
