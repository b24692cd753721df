//! What lode's multi-process tests and benchmarks share: the workspace's binaries
//! (built when missing), free loopback ports, the real `relayminer store` as a child
//! process, relays as gateways build them, a devnet with a staked supplier, and the real
//! kubectl. One home, so no test file carries its own copy.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lode_kernels::proto::{Message, Relay, RelayRequest, RelayResponse};
pub use lode_store_api::Client;
use lode_store_api::MinedRelay;
use sha2::{Digest, Sha256};

pub const TOKEN: &str = "test-token";

/// xorshift64*: a small seeded generator, so a test's or benchmark's random choices
/// (fault order, a workload) are the same on every run of one seed.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A free loopback address (bound and released; the child binds it right after).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

/// A free loopback port.
pub fn free_port() -> u16 {
    free_addr().port()
}

/// The directory of the workspace's binaries: where cargo put the running test or bench
/// (`target/<profile>/deps/…`), one level up.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let deps = exe.parent().expect("deps");
    deps.parent().expect("profile directory").to_path_buf()
}

/// The workspace's binaries and the packages that build them.
const BINARIES: [(&str, &str); 6] = [
    ("relayminer", "lode-relayminer"),
    ("lode-gateway", "lode-gateway"),
    ("lode-operator", "lode-operator"),
    ("engine-sim", "lode-engine-sim"),
    ("devnet", "lode-devnet"),
    ("lode-fleet", "lode-fleet"),
];

/// The workspace binary `name`, built first when it is missing (`cargo test
/// --workspace` builds only the binaries of packages with integration tests; the others
/// are built here, once). An existing one is used as it is: after changing a binary's
/// code, `cargo build --bins` before `cargo test -p lode-fleet` alone.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.exists() {
        let package = BINARIES
            .iter()
            .find(|(b, _)| *b == name)
            .map(|(_, p)| *p)
            .unwrap_or_else(|| panic!("{name} is not one of the workspace's binaries"));
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "-p", package, "--bin", name])
            .status()
            .expect("cargo build")
            .success();
        assert!(ok, "building {name} failed");
    }
    path
}

/// Every binary the local fleet runs, built when missing; their directory.
pub fn fleet_bins() -> PathBuf {
    for b in ["relayminer", "lode-gateway", "lode-operator", "engine-sim"] {
        bin(b);
    }
    bin_dir()
}

/// llama.cpp's real `llama-server`, as scripts/setup.sh builds it and exports it
/// (`LODE_LLAMA_SERVER`). A test that needs it fails, saying how to get it, rather than
/// skipping.
pub fn llama_server() -> PathBuf {
    let path = std::env::var_os("LODE_LLAMA_SERVER")
        .map(PathBuf::from)
        .expect(
            "LODE_LLAMA_SERVER is not set: run the tests through scripts/test.sh, or source \
         scripts/setup.sh (it builds llama.cpp's server once per machine and exports its path)",
        );
    assert!(
        path.is_file(),
        "LODE_LLAMA_SERVER={}: no such file (source scripts/setup.sh to build it)",
        path.display()
    );
    path
}

/// Runs the real kubectl against `kubeconfig`: (success, stdout + stderr).
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("KUBECACHEDIR", kubeconfig.with_file_name("kube-cache"))
        .output()
        .expect("kubectl is installed (scripts/setup.sh)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A running store process; killed when dropped.
#[derive(Debug)]
pub struct StoreProcess {
    pub child: Child,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

impl StoreProcess {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_on(data_dir, free_addr(), free_addr(), extra)
    }

    /// The token file `start` writes next to the data directory.
    pub fn token_file(data_dir: &Path) -> PathBuf {
        data_dir.with_extension("token")
    }

    /// Starts on given ports (a restart on the same address).
    pub fn start_on(data_dir: &Path, grpc: SocketAddr, admin: SocketAddr, extra: &[&str]) -> Self {
        let token_file = Self::token_file(data_dir);
        std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
        let child = Command::new(bin("relayminer"))
            .arg("store")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(grpc.to_string())
            .arg("--admin")
            .arg(admin.to_string())
            .arg("--token-file")
            .arg(&token_file)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn relayminer store");
        Self { child, grpc, admin }
    }

    /// Connects, waiting for the process to listen (up to 30 s).
    pub async fn client(&self) -> Client {
        let url = format!("http://{}", self.grpc);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match lode_store_api::connect(&url, TOKEN).await {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => panic!("store did not come up: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// CPU seconds (user + system) the process has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&format!("/proc/{}/stat", self.child.id()))
    }

    /// Peak resident memory of the process so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }
}

impl Drop for StoreProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// CPU seconds (user + system) from a `/proc/<pid>/stat` file.
pub fn cpu_seconds(stat_file: &str) -> f64 {
    let stat = std::fs::read_to_string(stat_file).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let ticks = field(11) + field(12);
    ticks as f64 / 100.0
}

/// A distinct serialized relay of exactly 250 bytes for index `i` (of generator `seed`).
pub fn relay(seed: u64, i: u64) -> MinedRelay {
    let mut payload = Vec::with_capacity(240);
    let mut x =
        (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i.wrapping_mul(0xd1b5_4a32_d192_ed03)) | 1;
    while payload.len() < 238 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        payload.extend_from_slice(&x.to_le_bytes());
    }
    payload.truncate(230);
    payload.extend_from_slice(&i.to_be_bytes());
    let relay = Relay {
        req: Some(RelayRequest {
            payload,
            ..Default::default()
        }),
        res: Some(RelayResponse::default()),
    };
    let bytes = relay.encode();
    debug_assert_eq!(bytes.len(), 250);
    MinedRelay {
        relay_hash: Sha256::digest(&bytes).to_vec(),
        relay_bytes: bytes,
        compute_units: 1 + i % 7,
    }
}

/// A relay as a gateway builds it: `body` (an OpenAI request) inside a POKTHTTPRequest,
/// ring-signed with the devnet's first gateway key for its first application.
pub fn gateway_relay(
    keys: &lode_devnet::DevnetKeys,
    header: &lode_kernels::proto::SessionHeader,
    supplier: &str,
    body: &str,
) -> RelayRequest {
    gateway_relay_to(
        keys,
        header,
        supplier,
        ("POST", "https://gateway.local/v1/chat/completions"),
        body,
    )
}

/// [`gateway_relay`] for any `(method, url)` of the engine.
pub fn gateway_relay_to(
    keys: &lode_devnet::DevnetKeys,
    header: &lode_kernels::proto::SessionHeader,
    supplier: &str,
    (method, url): (&str, &str),
    body: &str,
) -> RelayRequest {
    use lode_kernels::proto::{Header, PoktHttpRequest};
    let (app, gateway) = (&keys.applications[0], &keys.gateways[0]);
    let mut header_map = std::collections::BTreeMap::new();
    header_map.insert(
        "Content-Type".to_string(),
        Header {
            key: "Content-Type".into(),
            values: vec!["application/json".into()],
        },
    );
    let mut req = RelayRequest {
        payload: PoktHttpRequest {
            method: method.into(),
            header: header_map,
            url: url.into(),
            body_bz: body.as_bytes().to_vec(),
        }
        .encode(),
        ..Default::default()
    };
    req.meta.session_header = Some(header.clone());
    req.meta.supplier_operator_address = supplier.to_string();
    lode_kernels::relay::sign_request(
        &mut req,
        &[app.public_key(), gateway.public_key()],
        gateway,
        &mut rand_core::OsRng,
    )
    .expect("sign");
    req
}

/// A ring-signature bomb (issue 23): `honest`'s signature rewritten to list `member`
/// (a ring member's compressed key) `members` times, 65 bytes each, behind a size field
/// that says so. Verifying it naively costs seconds of CPU per 100,000 members.
pub fn ring_bomb(honest: &[u8], member: &[u8; 33], members: u32) -> Vec<u8> {
    let mut sig = Vec::with_capacity(69 + 65 * members as usize);
    sig.extend_from_slice(&members.to_be_bytes());
    sig.extend_from_slice(&honest[4..69]);
    for _ in 0..members {
        sig.extend_from_slice(&[1u8; 32]);
        sig.extend_from_slice(member);
    }
    sig
}

/// A devnet serving on loopback with its first supplier staked for `service`, produced
/// into the session where it serves; that session's header for the first application.
pub async fn staked_devnet(
    config: &lode_devnet::DevnetConfig,
    service: &str,
) -> (
    lode_devnet::Devnet,
    lode_devnet::Running,
    lode_kernels::crypto::SecretKey,
    lode_kernels::proto::SessionHeader,
) {
    let devnet = lode_devnet::Devnet::new(config);
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let chain = devnet.serve(any, any, None).await.expect("devnet");
    let supplier = devnet.keys().suppliers[0].clone();
    let session = devnet
        .stake_into_next_session(&chain, 0, service)
        .await
        .expect("staked");
    assert!(
        session
            .suppliers
            .contains(&supplier.public_key().address().to_bech32(lode_devnet::HRP)),
        "the staked supplier serves the session"
    );
    (devnet, chain, supplier, session.header)
}
