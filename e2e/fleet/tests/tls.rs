//! TLS on every outbound connection (issue 23): `relayminer serve` and `lode-gateway`,
//! run as the real binaries, reach the chain's gRPC, RPC and websocket at `https://`
//! endpoints, and the gateway reaches a supplier staked at an `https://` URL. TLS
//! proxies with a test CA's certificate front the devnet and serve; the processes trust
//! that CA through `SSL_CERT_FILE`, as an operator with a private CA would. A gateway
//! that does not trust the CA reaches nothing and says why.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lode_devnet::{Devnet, DevnetConfig, HRP};
use lode_engine_sim::{EngineSim, SimConfig};
use lode_kernels::crypto::SecretKey;
use lode_testkit::{StoreProcess, bin, free_port};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::ServerConfig;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVICE: &str = "llm";
use lode_fleet::MODEL;

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

fn address(k: &SecretKey) -> String {
    k.public_key().address().to_bech32(HRP)
}

/// A CA (its PEM) and a server configuration with a `localhost` certificate it signed,
/// offering `alpn`.
struct Pki {
    ca_pem: String,
    cert: rustls::pki_types::CertificateDer<'static>,
    cert_pem: String,
    key: Vec<u8>,
    key_pem: String,
}

impl Pki {
    fn new(name: &str) -> Self {
        Self::for_names(name, &["localhost"])
    }

    fn for_names(name: &str, names: &[&str]) -> Self {
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, name);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("key")).expect("CA");
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params")
            .signed_by(&key, &ca)
            .expect("leaf");
        Self {
            ca_pem: ca.pem(),
            cert: cert.der().clone(),
            cert_pem: cert.pem(),
            key: key.serialize_der(),
            key_pem: key.serialize_pem(),
        }
    }

    fn server(&self, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        let mut c =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(
                    vec![self.cert.clone()],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone())),
                )
                .expect("certificate");
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    }
}

/// A TLS-terminating proxy to `backend`; remembers the first line each client sent
/// inside TLS.
struct TlsProxy {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsProxy {
    async fn start(backend: SocketAddr, config: Arc<ServerConfig>) -> Self {
        let listener = tokio::net::TcpListener::bind(any()).await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, log) = (acceptor.clone(), log.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = vec![0u8; 16 << 10];
                    let Ok(n) = tls.read(&mut buf).await else {
                        return;
                    };
                    let first = String::from_utf8_lossy(&buf[..n]);
                    let line = first.lines().next().unwrap_or("").to_string();
                    log.lock().expect("lock").push(line);
                    let Ok(mut up) = tokio::net::TcpStream::connect(backend).await else {
                        return;
                    };
                    if up.write_all(&buf[..n]).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                    }
                });
            }
        });
        Self { port, seen, task }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    fn saw(&self, prefix: &str) -> usize {
        let seen = self.seen.lock().expect("lock");
        seen.iter().filter(|l| l.starts_with(prefix)).count()
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A child process (killed on drop), its stderr in a file.
struct Child {
    _process: tokio::process::Child,
    log: std::path::PathBuf,
}

impl Child {
    fn spawn(dir: &Path, name: &str, program: &Path, args: &[&str], ca_file: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let child = tokio::process::Command::new(program)
            .args(args)
            .env("SSL_CERT_FILE", ca_file)
            .env_remove("SSL_CERT_DIR")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        Self {
            _process: child,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

async fn ok_within<T>(
    what: &str,
    limit: Duration,
    mut attempt: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match attempt().await {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

fn gateway_config(dir: &Path, name: &str, devnet: &Devnet, grpc: &str, rpc: &str) -> (u16, String) {
    let port = free_port();
    let key = write(
        dir,
        &format!("{name}.key"),
        &lode_kernels::hex::encode(&devnet.keys().gateways[0].to_bytes()),
    );
    let yaml = format!(
        "listen: 127.0.0.1:{port}\nadmin: 127.0.0.1:{}\n\
         chain: {{grpc_url: '{grpc}', rpc_url: '{rpc}'}}\n\
         signing_key_file: '{}'\n\
         applications: [{{address: {}, api_keys: [sk-test]}}]\n\
         models: {{'{MODEL}': {SERVICE}}}\nrequest_timeout_seconds: 10\n",
        free_port(),
        key.display(),
        address(&devnet.keys().applications[0]),
    );
    let file = write(dir, &format!("{name}.yaml"), &yaml);
    (port, file.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chain_and_suppliers_over_tls_with_a_private_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let pki = Pki::new("lode test CA");
    let ca_file = write(d, "ca.pem", &pki.ca_pem);

    // The devnet, plaintext behind TLS proxies: gRPC (h2) and RPC (HTTP/1.1, websocket).
    let devnet = Devnet::new(&DevnetConfig::new(71));
    let chain = devnet.serve(any(), any(), None).await.expect("devnet");
    let grpc_addr = chain
        .grpc_url
        .trim_start_matches("http://")
        .parse()
        .expect("grpc");
    let rpc_addr = chain
        .rpc_url
        .trim_start_matches("http://")
        .parse()
        .expect("rpc");
    let grpc = TlsProxy::start(grpc_addr, pki.server(&[b"h2"])).await;
    let rpc = TlsProxy::start(rpc_addr, pki.server(&[b"http/1.1"])).await;

    // serve, reached at an https:// endpoint through a third proxy.
    let sim = EngineSim::new(SimConfig {
        model: MODEL.into(),
        ..SimConfig::default()
    });
    let (sim_addr, _) = sim
        .serve(any(), std::future::pending())
        .await
        .expect("engine-sim");
    let store_dir = d.join("store");
    let store = StoreProcess::start(&store_dir, &[]);
    store.client().await;
    let (relay_port, admin_port) = (free_port(), free_port());
    let relay = TlsProxy::start(
        format!("127.0.0.1:{relay_port}").parse().expect("addr"),
        pki.server(&[b"http/1.1"]),
    )
    .await;
    devnet
        .stake_into_next_session_at(&chain, 0, SERVICE, &relay.url())
        .await
        .expect("staked at an https:// endpoint");
    let key = write(
        d,
        "supplier.key",
        &lode_kernels::hex::encode(&devnet.keys().suppliers[0].to_bytes()),
    );
    let serve_yaml = write(
        d,
        "serve.yaml",
        &format!(
            "listen: 127.0.0.1:{relay_port}\nadmin: 127.0.0.1:{admin_port}\n\
             chain: {{grpc_url: '{}', rpc_url: '{}'}}\n\
             store: {{url: 'http://{}', token_file: '{}'}}\n\
             signing_key_files: ['{}']\n\
             services:\n  - service_id: {SERVICE}\n    backend_url: http://{sim_addr}\n",
            grpc.url(),
            rpc.url(),
            store.grpc,
            StoreProcess::token_file(&store_dir).display(),
            key.display(),
        ),
    );
    let serve = Child::spawn(
        d,
        "serve",
        &bin("relayminer"),
        &["serve", "--config", &serve_yaml.display().to_string()],
        &ca_file,
    );
    let ticker = {
        let d = devnet.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                d.advance(1);
            }
        })
    };
    ok_within(
        "serve ready over TLS",
        Duration::from_secs(30),
        async || match lode_fleet::http_get(&format!("127.0.0.1:{admin_port}"), "/readyz").await {
            Some(_) => Ok(()),
            None => Err(format!("not ready\n{}", serve.log())),
        },
    )
    .await;

    // The gateway trusting the CA: a chat completion through an https:// supplier.
    let (port, config) = gateway_config(d, "gateway", &devnet, &grpc.url(), &rpc.url());
    let gateway = Child::spawn(
        d,
        "gateway",
        &bin("lode-gateway"),
        &["--config", &config],
        &ca_file,
    );
    let body = ok_within(
        "a chat completion over TLS",
        Duration::from_secs(30),
        async || {
            lode_fleet::chat_as(port, Some("sk-test"), "hello over TLS", false)
                .await
                .map_err(|e| format!("{e}\n{}\n{}", gateway.log(), serve.log()))
        },
    )
    .await;
    assert!(body.contains("\"choices\""), "{body}");
    assert!(grpc.saw("PRI * HTTP/2.0") >= 2, "gRPC over TLS from both");
    assert!(
        rpc.saw("GET /websocket") >= 2,
        "blocks followed over wss by both"
    );
    assert!(
        rpc.saw("POST") + rpc.saw("GET /status") >= 1,
        "RPC calls over TLS"
    );
    assert!(
        relay.saw("POST") >= 1,
        "the relay went to the supplier over TLS"
    );

    // A gateway that does not trust the CA reaches nothing and logs why.
    let other = write(d, "other-ca.pem", &Pki::new("another CA").ca_pem);
    let (port, config) = gateway_config(d, "untrusting", &devnet, &grpc.url(), &rpc.url());
    let untrusting = Child::spawn(
        d,
        "untrusting",
        &bin("lode-gateway"),
        &["--config", &config],
        &other,
    );
    ok_within(
        "the certificate refused",
        Duration::from_secs(20),
        async || {
            let log = untrusting.log();
            if let Some(line) = log.lines().find(|l| l.contains("UnknownIssuer")) {
                println!("the untrusting gateway: {line}");
                Ok(())
            } else {
                Err(log)
            }
        },
    )
    .await;
    let refused = lode_fleet::chat_as(port, Some("sk-test"), "hello", false).await;
    assert!(refused.is_err(), "{refused:?}");
    ticker.abort();
}

/// The store speaks TLS with a certificate a private CA signed for the name lode's
/// operator gives it: a client with that CA and name gets in; a plaintext client, one
/// trusting another CA, and one expecting another name do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_speaks_tls_to_clients_that_trust_its_ca() {
    use lode_store_api::{ListSessionsRequest, StoreTls};
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let name = lode_contracts::serve::StoreConfig::OPERATOR_TLS_NAME;
    let pki = Pki::for_names("store CA", &[name]);
    let ca_file = write(d, "ca.pem", &pki.ca_pem);
    let cert = write(d, "tls.crt", &pki.cert_pem);
    let key = write(d, "tls.key", &pki.key_pem);
    let data = d.join("store");
    let store = StoreProcess::start(
        &data,
        &[
            "--tls-cert",
            &cert.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
        ],
    );
    let token = std::fs::read_to_string(StoreProcess::token_file(&data)).expect("token");
    let url = format!("https://{}", store.grpc);
    let trusting = StoreTls {
        ca_file: ca_file.clone(),
        server_name: name.to_string(),
    };
    let mut client = ok_within("the store over TLS", Duration::from_secs(20), async || {
        lode_store_api::connect_with(&url, token.trim(), Some(&trusting))
            .await
            .map_err(|e| lode_net::error_chain(e.as_ref()))
    })
    .await;
    let listed = client
        .list_sessions(ListSessionsRequest::default())
        .await
        .expect("a call over TLS with the token");
    assert!(listed.into_inner().sessions.is_empty());

    // Plaintext to the TLS port, another CA, another name: no connection.
    let plain = lode_store_api::connect(&format!("http://{}", store.grpc), token.trim()).await;
    let refused = match plain {
        Err(e) => lode_net::error_chain(e.as_ref()),
        Ok(mut c) => c
            .list_sessions(ListSessionsRequest::default())
            .await
            .expect_err("plaintext to a TLS port")
            .to_string(),
    };
    assert!(!refused.is_empty());
    println!("plaintext to the TLS port: {refused}");
    let other = write(d, "other.pem", &Pki::new("another CA").ca_pem);
    for (tls, says) in [
        (
            StoreTls {
                ca_file: other,
                server_name: name.to_string(),
            },
            "UnknownIssuer",
        ),
        (
            StoreTls {
                ca_file: ca_file.clone(),
                server_name: "store.elsewhere.internal".into(),
            },
            "not valid for name",
        ),
    ] {
        let e = lode_store_api::connect_with(&url, token.trim(), Some(&tls))
            .await
            .map(|_| ())
            .expect_err("refused");
        let e = lode_net::error_chain(e.as_ref());
        assert!(e.contains(says), "{e}");
    }
    // A CA file with an http:// URL is a configuration error, said at once.
    let e = lode_store_api::connect_lazy(
        &format!("http://{}", store.grpc),
        "t",
        Duration::from_secs(1),
        Some(&trusting),
    )
    .map(|_| ())
    .expect_err("refused");
    assert!(e.to_string().contains("must be https://"), "{e}");
}
