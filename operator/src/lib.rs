//! lode's operator: `Supplier`, `ServiceModel` and `GatewayPool` into the objects that
//! run them. Every reconcile is one pipeline, a module a step: `fetch` (reads) →
//! `validate` (pure) → `build` (pure objects) → `apply` (server-side apply) → `status`
//! (pure decision, typed write); `controller` puts the steps in order. `render` runs the
//! pure steps without a cluster; `scheduler` starts claim/prove Jobs at window openings
//! and `autoscale` scales ServiceModels on their pods' demand.

pub mod admin;
pub mod apply;
pub mod autoscale;
pub mod build;
pub mod context;
pub mod controller;
pub mod fetch;
pub mod leader;
pub mod outcomes;
pub mod render;
pub mod scheduler;
pub mod status;
pub mod validate;
