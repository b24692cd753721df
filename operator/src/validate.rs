//! The pure checks of reconciling that the CRD schema cannot make: which Supplier a
//! ServiceModel serves for, whether its engine and tolerations make sense, and the stake
//! a Supplier asks for. Errors carry the words a condition and an Event show.

use lode_contracts::stake::{RevShare, ServiceStake, StakeSpec};
use lode_crds::{EngineKind, ServiceModel, Supplier};

use crate::build::{self, BuildError};

/// A ServiceModel listed by more than one Supplier (a ServiceModel serves one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "ServiceModel {model} is listed by several Suppliers ({suppliers}); a ServiceModel serves one"
)]
pub struct SharedModel {
    pub model: String,
    pub suppliers: String,
}

/// The Supplier that lists `model` (same namespace), if exactly one does.
pub fn supplier_of<'a>(
    model: &ServiceModel,
    suppliers: &'a [Supplier],
) -> Result<Option<&'a Supplier>, SharedModel> {
    let name = build::name_of(model);
    let ns = &model.metadata.namespace;
    let listing: Vec<&Supplier> = suppliers
        .iter()
        .filter(|s| &s.metadata.namespace == ns)
        .filter(|s| s.spec.services.iter().any(|x| x.service_model == name))
        .collect();
    match listing.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        many => Err(SharedModel {
            model: name,
            suppliers: many
                .iter()
                .map(|s| build::name_of(*s))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// What a ServiceModel needs beyond its schema: an image for a custom engine, and
/// tolerations that parse.
pub fn service_model(sm: &ServiceModel) -> Result<(), BuildError> {
    let kind = sm.spec.engine.kind;
    if kind == EngineKind::Custom && sm.spec.engine.image.is_none() {
        return Err(BuildError::Invalid("a custom engine needs an image".into()));
    }
    if sm.spec.gpus.count == 0 && !kind.runs_on_cpu() {
        return Err(BuildError::Invalid(format!(
            "engine {} needs a GPU: set gpus.count to 1 or more, or serve on CPUs with engine kind llamacpp (or a custom image)",
            kind.name()
        )));
    }
    let m = &sm.spec.model;
    let fetched = m.uri.as_deref().is_some_and(lode_crds::fetched_uri);
    if m.digest.is_some() && m.uri.is_some() && !fetched {
        return Err(BuildError::Invalid(
            "model.digest pins weights lode reads before the engine starts: a pvc, image, hf:// or https:// source (the engine loads other URIs itself)".into(),
        ));
    }
    if m.cache.is_some() && !fetched {
        return Err(BuildError::Invalid(
            "model.cache is the weight cache of a fetched uri (hf:// or https://)".into(),
        ));
    }
    if let Some(repo) = m.uri.as_deref().and_then(|u| u.strip_prefix("hf://")) {
        let (repo, rev) = repo.split_once('@').unwrap_or((repo, "main"));
        let part = |p: &str| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if repo.split('/').count() != 2 || !repo.split('/').all(part) || !rev.split('/').all(part) {
            return Err(BuildError::Invalid(format!(
                "model.uri {:?}: an hf:// source is hf://<org>/<name>[@<revision>]",
                m.uri.as_deref().unwrap_or("")
            )));
        }
    }
    match (&sm.spec.model.file, kind) {
        (None, EngineKind::Llamacpp) => {
            return Err(BuildError::Invalid(
                "a llamacpp engine loads one GGUF file: set model.file (e.g. model.gguf)".into(),
            ));
        }
        (Some(f), _) if !is_relative_file(f) => {
            return Err(BuildError::Invalid(format!(
                "model.file {f:?} must be a relative path inside the model source, without '..'"
            )));
        }
        _ => {}
    }
    for t in &sm.spec.gpus.tolerations {
        build::servicemodel::parse_toleration(t)?;
    }
    Ok(())
}

/// A path inside the model's directory: relative, with no empty, `.` or `..` part.
fn is_relative_file(f: &str) -> bool {
    !f.is_empty() && f.len() <= 255 && f.split('/').all(|part| !matches!(part, "" | "." | ".."))
}

/// The on-chain state a Supplier asks for: its stake, owner, and every service at its
/// public endpoint with its revenue shares; refused with the reason when the chain would
/// refuse it.
pub fn stake_spec(s: &Supplier) -> Result<StakeSpec, BuildError> {
    let spec = &s.spec;
    let stake_upokt = spec.stake_upokt.parse().map_err(|_| {
        BuildError::Invalid(format!("stakeUpokt {:?} is not a number", spec.stake_upokt))
    })?;
    // Said in the Supplier's own words (the chain's rules are checked again below).
    for svc in &spec.services {
        let total: u32 = svc.rev_share_percent.values().map(|p| u32::from(*p)).sum();
        if !svc.rev_share_percent.is_empty() && total != 100 {
            return Err(BuildError::Invalid(format!(
                "service {}: revSharePercent adds up to {total}, not 100",
                svc.service_id
            )));
        }
    }
    let services = spec
        .services
        .iter()
        .map(|svc| ServiceStake {
            service_id: svc.service_id.clone(),
            url: spec.public_endpoint.clone(),
            rev_share: svc
                .rev_share_percent
                .iter()
                .map(|(a, p)| RevShare {
                    address: a.clone(),
                    percent: u64::from(*p),
                })
                .collect(),
        })
        .collect();
    let want = StakeSpec {
        operator: spec.operator_address.clone(),
        owner: spec
            .owner_address
            .clone()
            .unwrap_or_else(|| spec.operator_address.clone()),
        stake_upokt,
        services,
    };
    want.validate().map_err(|e| BuildError::Invalid(e.0))?;
    Ok(want)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::{sample_model, sample_supplier};

    #[test]
    fn a_model_is_served_by_the_one_supplier_that_lists_it() {
        let (sm, s) = (sample_model(), sample_supplier());
        let one = vec![s.clone()];
        assert_eq!(
            supplier_of(&sm, &one).expect("ok").map(build::name_of),
            Some("supplier-1".into())
        );
        assert!(supplier_of(&sm, &[]).expect("ok").is_none());
        let mut other = s.clone();
        other.metadata.name = Some("supplier-2".into());
        let e = supplier_of(&sm, &[s.clone(), other]).expect_err("shared");
        assert_eq!(e.suppliers, "supplier-1, supplier-2");
        let mut elsewhere = s;
        elsewhere.metadata.namespace = Some("other".into());
        assert!(
            supplier_of(&sm, &[elsewhere]).expect("ok").is_none(),
            "another namespace"
        );
    }

    #[test]
    fn custom_engines_need_an_image_and_tolerations_must_parse() {
        let mut sm = sample_model();
        assert_eq!(service_model(&sm), Ok(()));
        sm.spec.gpus.tolerations = vec!["x:Never".into()];
        assert_eq!(
            service_model(&sm).expect_err("bad").reason(),
            "InvalidToleration"
        );
        let mut sm = sample_model();
        sm.spec.engine.kind = EngineKind::Custom;
        assert!(matches!(service_model(&sm), Err(BuildError::Invalid(_))));
        sm.spec.engine.image = Some("example.com/engine:1".into());
        assert_eq!(service_model(&sm), Ok(()));
    }

    #[test]
    fn the_stake_spec_is_refused_in_the_suppliers_words() {
        let mut s = sample_supplier();
        let spec = stake_spec(&s).expect("valid");
        assert_eq!(spec.services[0].url, "https://relay.example.com");
        assert_eq!(spec.owner, spec.operator, "custodial by default");
        s.spec.stake_upokt = "lots".into();
        assert!(
            matches!(stake_spec(&s), Err(BuildError::Invalid(m)) if m.contains("not a number"))
        );
        let mut s = sample_supplier();
        s.spec.public_endpoint = "relay.example.com".into();
        assert!(matches!(stake_spec(&s), Err(BuildError::Invalid(m)) if m.contains("http(s)")));
    }
}
