# Sourced by scripts/run.sh and scripts/test.sh: makes a fresh machine ready to build.
# Everything the project needs must be installed from here (CI runs on a clean clone).

set -euo pipefail

# System packages the build needs: libclang for RocksDB's bindings (bindgen), and
# sccache so RocksDB's 12-minute C++ build is paid once per machine.
APT_PACKAGES=(libclang-dev sccache)

need_apt=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# Python packages the tests use as independent references: cosmpy (PyPI) cross-checks
# lode's Cosmos transactions; kubernetes-validate checks the CRDs against Kubernetes'
# own schemas; the official openai SDK is the client the gateway's tests drive.
PIP_PACKAGES=(cosmpy==0.12.2 kubernetes-validate==1.37.0 openai==3.57.0)
if ! python3 -c "import cosmpy, kubernetes_validate, openai" >/dev/null 2>&1; then
  echo "setup: installing ${PIP_PACKAGES[*]}"
  python3 -m pip install --quiet --disable-pip-version-check "${PIP_PACKAGES[@]}"
fi

# kubectl: the fleet's system test (and its users) drive kubesim with the real one.
if ! command -v kubectl >/dev/null 2>&1; then
  echo "setup: installing kubectl (Debian's kubernetes-client)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kubernetes-client \
    || echo "setup: kubectl could not be installed; the kubesim system test needs it" >&2
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

# The protocol vectors live beside the repository unless told otherwise.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export LODE_VECTORS="${LODE_VECTORS:-$root/../shared/vectors}"
if [ ! -d "$LODE_VECTORS" ]; then
  echo "setup: vector directory $LODE_VECTORS not found (set LODE_VECTORS)" >&2
  exit 1
fi
