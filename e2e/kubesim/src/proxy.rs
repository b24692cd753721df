//! The stand-in for kube-proxy: every Service port listens on its cluster IP (loopback
//! 127.1.x.y), and NodePort/LoadBalancer ports also on 127.0.0.1:<nodePort>; each
//! connection goes to a ready pod the Service selects (round robin), at the target port
//! (a number or a container port's name).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::controllers::service_pods;
use crate::resources::Res;
use crate::store::Store;

/// The proxy.
#[derive(Debug)]
pub struct Proxy {
    store: Arc<Store>,
    listeners: std::sync::Mutex<HashMap<(String, String, String), JoinHandle<()>>>,
    turn: Arc<AtomicUsize>,
}

/// The Service ports close with the proxy: a kubesim that shut down leaves no listener
/// behind to catch the next one's connections (a later kubesim in the same process reuses
/// its addresses).
impl Drop for Proxy {
    fn drop(&mut self) {
        for (_, task) in self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            task.abort();
        }
    }
}

pub(crate) fn target_port(pod: &Value, target: &Value) -> Option<i64> {
    if let Some(n) = target.as_i64() {
        return Some(n);
    }
    let name = target.as_str()?;
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    pod["spec"]["containers"]
        .as_array()?
        .iter()
        .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_i64())
}

impl Proxy {
    pub fn new(store: Arc<Store>) -> Arc<Self> {
        Arc::new(Self {
            store,
            listeners: std::sync::Mutex::new(HashMap::new()),
            turn: Arc::new(AtomicUsize::new(0)),
        })
    }

    pub async fn run(self: Arc<Self>, period: Duration) {
        loop {
            self.pass().await;
            tokio::time::sleep(period).await;
        }
    }

    async fn pass(&self) {
        let services = self.store.list(&Res::new("", "services"), None);
        let mut wanted = Vec::new();
        for s in &services {
            let (ns, name) = crate::store::ns_name(s);
            let Some(ip) = s["spec"]["clusterIP"].as_str().filter(|ip| *ip != "None") else {
                continue;
            };
            for p in s["spec"]["ports"].as_array().into_iter().flatten() {
                let port = p["port"].as_i64().unwrap_or(0);
                let pname = p["name"].as_str().unwrap_or("").to_string();
                wanted.push((
                    (ns.clone(), name.clone(), format!("{ip}:{port}")),
                    pname.clone(),
                ));
                if let Some(np) = p["nodePort"].as_i64() {
                    wanted.push(((ns.clone(), name.clone(), format!("127.0.0.1:{np}")), pname));
                }
            }
        }
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let keep: std::collections::HashSet<_> = wanted.iter().map(|(k, _)| k.clone()).collect();
        listeners.retain(|k, task| {
            let alive = keep.contains(k);
            if !alive {
                task.abort();
            }
            alive
        });
        for (key, port_name) in wanted {
            if listeners.contains_key(&key) {
                continue;
            }
            let listener = match std::net::TcpListener::bind(&key.2)
                .and_then(|l| l.set_nonblocking(true).map(|_| l))
                .and_then(TcpListener::from_std)
            {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(addr = %key.2, error = %e, "service port not bound");
                    continue;
                }
            };
            let store = self.store.clone();
            let turn = self.turn.clone();
            let (ns, name) = (key.0.clone(), key.1.clone());
            let task = tokio::spawn(async move {
                loop {
                    let Ok((conn, _)) = listener.accept().await else {
                        // Out of descriptors or similar: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let Some(svc) = store.get(&Res::new("", "services"), &ns, &name) else {
                        return;
                    };
                    let target = svc["spec"]["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|p| p["name"].as_str().unwrap_or("") == port_name)
                        .map(|p| p["targetPort"].clone())
                        .unwrap_or(Value::Null);
                    let pods = service_pods(&store, &svc);
                    if pods.is_empty() {
                        continue;
                    }
                    let pod = &pods[turn.fetch_add(1, Ordering::Relaxed) % pods.len()];
                    let (Some(ip), Some(port)) =
                        (pod["status"]["podIP"].as_str(), target_port(pod, &target))
                    else {
                        continue;
                    };
                    let addr = format!("{ip}:{port}");
                    tokio::spawn(async move {
                        let mut conn = conn;
                        if let Ok(mut up) = TcpStream::connect(&addr).await {
                            let _ = conn.set_nodelay(true);
                            let _ = up.set_nodelay(true);
                            let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
                        }
                    });
                }
            });
            listeners.insert(key, task);
        }
    }
}
