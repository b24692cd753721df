//! What lode's images run as on kubesim: lode's own images as the workspace's binaries;
//! llama.cpp's server image as the real `llama-server` when the fleet has one (its
//! command line is llama.cpp's own, with paths and addresses mapped by the kubelet); and
//! every other engine image (vLLM, TensorRT-LLM, SGLang, Triton, custom) as
//! `engine-sim`, with the model name and ports taken from the engine's own command line.

use std::path::PathBuf;

use lode_kubesim::runtime::{Runtime, repository};

/// lode's images on this machine.
#[derive(Clone, Debug)]
pub struct LodeImages {
    /// Directory with `relayminer`, `lode-gateway`, `lode-operator`, `engine-sim`.
    pub bin_dir: PathBuf,
    /// Extra arguments for every `engine-sim` (e.g. `--ttft-ms 50`).
    pub engine_args: Vec<String>,
    /// llama.cpp's `llama-server`: what its images (`…/llama.cpp:server…`) run as.
    /// Without one they run as `engine-sim` too.
    pub llama_server: Option<PathBuf>,
}

impl Runtime for LodeImages {
    fn program(
        &self,
        image: &str,
        args: Vec<String>,
        pod_ip: &str,
    ) -> Result<(PathBuf, Vec<String>), String> {
        let bin = |b: &str| self.bin_dir.join(b);
        Ok(match repository(image) {
            "relayminer" => (bin("relayminer"), args),
            "gateway" | "lode-gateway" => (bin("lode-gateway"), args),
            "operator" | "lode-operator" => (bin("lode-operator"), args),
            "llama.cpp" if self.llama_server.is_some() => {
                (self.llama_server.clone().unwrap_or_default(), args)
            }
            _ => (
                bin("engine-sim"),
                engine_args(&args, pod_ip, &self.engine_args),
            ),
        })
    }
}

/// `engine-sim` arguments standing in for an engine's command line: its model name,
/// HTTP port and (Triton) gRPC port.
fn engine_args(args: &[String], ip: &str, extra: &[String]) -> Vec<String> {
    let mut model = None;
    let mut port = None;
    let mut grpc = None;
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (a.as_str(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next().cloned());
        match flag {
            "--served-model-name" | "--alias" => model = value(),
            "--model" | "--model-path" if model.is_none() => model = value(),
            "--port" | "--http-port" => port = value(),
            "--grpc-port" => grpc = value(),
            _ => {}
        }
    }
    let mut out = vec![
        "--listen".to_string(),
        format!("{ip}:{}", port.unwrap_or_else(|| "8000".into())),
        "--model".to_string(),
        model.unwrap_or_else(|| "sim-model".into()),
    ];
    if let Some(g) = grpc {
        out.push("--triton-listen".into());
        out.push(format!("{ip}:{g}"));
    }
    out.extend(extra.iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_images_run_engine_sim_with_their_model_and_ports() {
        assert_eq!(
            engine_args(
                &[
                    "--model".into(),
                    "Qwen".into(),
                    "--host".into(),
                    "127.2.0.5".into(),
                    "--port".into(),
                    "8000".into()
                ],
                "127.2.0.5",
                &[]
            ),
            vec!["--listen", "127.2.0.5:8000", "--model", "Qwen"]
        );
        assert_eq!(
            engine_args(
                &[
                    "--model-repository=/models".into(),
                    "--grpc-port=8001".into(),
                    "--http-port=8002".into()
                ],
                "127.2.0.5",
                &[]
            ),
            vec![
                "--listen",
                "127.2.0.5:8002",
                "--model",
                "sim-model",
                "--triton-listen",
                "127.2.0.5:8001"
            ]
        );
        // llama.cpp's server: the model file is not the name it serves (`--alias`).
        assert_eq!(
            engine_args(
                &[
                    "--model".into(),
                    "/models/tiny.gguf".into(),
                    "--alias".into(),
                    "tiny".into(),
                    "--port".into(),
                    "8000".into()
                ],
                "127.2.0.5",
                &[]
            ),
            vec!["--listen", "127.2.0.5:8000", "--model", "tiny"]
        );
        let mut images = LodeImages {
            bin_dir: "/bin".into(),
            engine_args: vec!["--ttft-ms".into(), "50".into()],
            llama_server: None,
        };
        let (p, args) = images
            .program(
                "ghcr.io/lode-pokt/relayminer:0.1.0",
                vec!["serve".into()],
                "127.2.0.5",
            )
            .expect("runs");
        assert_eq!(
            (p, args),
            (PathBuf::from("/bin/relayminer"), vec!["serve".to_string()])
        );
        let (p, args) = images
            .program(
                "vllm/vllm-openai:v0.11.0",
                vec!["--port".into(), "8000".into()],
                "127.2.0.5",
            )
            .expect("runs");
        assert_eq!(p, PathBuf::from("/bin/engine-sim"));
        assert!(
            args.ends_with(&["--ttft-ms".to_string(), "50".to_string()]),
            "{args:?}"
        );
        // llama.cpp's server image: engine-sim, or the real server with its own flags.
        let llama_args = vec!["--model".to_string(), "/tmp/m.gguf".into()];
        let image = "ghcr.io/ggml-org/llama.cpp:server";
        let (p, _) = images
            .program(image, llama_args.clone(), "127.2.0.5")
            .expect("runs");
        assert_eq!(p, PathBuf::from("/bin/engine-sim"));
        images.llama_server = Some("/opt/llama-server".into());
        assert_eq!(
            images
                .program(image, llama_args.clone(), "127.2.0.5")
                .expect("runs"),
            (PathBuf::from("/opt/llama-server"), llama_args)
        );
    }
}
