#!/usr/bin/env bash
# vmctl's set-up, in one place, for a fresh Debian/Ubuntu machine (the README's two commands):
#
#   ./bootstrap.sh         install what is missing, build the guest image and the example images,
#                          and bring up examples/quickstart.yaml
#   ./bootstrap.sh test    install what is missing, then run the whole test suite (what CI runs)
#
# Runs as root (or through sudo): it installs Debian packages, and vmctl's host containers need root.
set -euo pipefail
cd "$(dirname "$0")"

PACKAGES=(
  # hypervisor and libvirt (libvirt-python is built against libvirt-dev)
  qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev pkg-config libxml2-utils
  # guest image: kernel modules, initramfs contents
  kmod cpio busybox-static dropbear-bin crun e2fsprogs
  # container images and host containers
  skopeo umoci runc slirp4netns iproute2 procps
  # the distribution registry (/usr/bin/docker-registry): tests/integration/test_registry.py serves
  # `image: 127.0.0.1:PORT/...` from it, started on loopback by the test (the packaged service is not used)
  docker-registry
  # compose's `init: true`: a static tini bound into the container as PID 1
  tini
  # the environment network: a resolver per network (util-linux: unshare, nsenter)
  dnsmasq-base util-linux
  # the multi-host test bed (bench/hostbed.py): an sshd per bed host
  openssh-server
  # workloads the example images carry, and the comparison
  stress-ng fio iperf3 redis-server redis-tools chromium
  # `vmctl compare`'s other default sandboxes: Docker's engine (dockerd and its own client in /usr/bin;
  # with no systemd, compare starts dockerd itself) and podman (run with runc, networking by slirp4netns);
  # podman is also the builder of services' `build:` (vmctl/build.py)
  docker.io podman
  # moving a plain container between hosts (bench/migrate.py's row beside live migration): CRIU, where
  # the kernel lets `criu check` pass
  criu
  # our own microVM kernel (guest_images/minimal)
  linux-source-6.1 build-essential bc bison flex libelf-dev libssl-dev
  # Python
  python3 python3-venv python3-dev gcc git curl
)

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

install_packages() {
  local missing=()
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    $SUDO apt-get update -qq -o DPkg::Lock::Timeout=600
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

python_env() {
  if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    python3 -m venv .venv
  fi
  if ! .venv/bin/python -c 'import vmctl, libvirt, paramiko, pytest, matplotlib' 2>/dev/null \
     || [ pyproject.toml -nt .venv/.installed ]; then
    log "installing vmctl and its Python dependencies into .venv"
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -e '.[test]'
    touch .venv/.installed
  fi
  # Byte-compile the tree: an editable install leaves it to the first import, which never writes a .pyc
  # where PYTHONDONTWRITEBYTECODE is set, and then every vmctl command compiles ~12k lines again (0.5 s
  # of each CLI call here, ten times that inside the nested KVM test host). A stale .pyc is never used.
  .venv/bin/python -m compileall -q vmctl bench examples tests || true  # a file that does not compile: pytest says which
}

quickstart() {
  log "building the default guest image (cached after the first time)"
  .venv/bin/vmctl image build
  log "building the example container images from Debian packages"
  .venv/bin/python examples/build_images.py
  log "bringing up examples/quickstart.yaml"
  .venv/bin/vmctl -f examples/quickstart.yaml up
  .venv/bin/vmctl -f examples/quickstart.yaml status
  .venv/bin/vmctl -f examples/quickstart.yaml ps -a 2>/dev/null || true
  log "try: curl http://127.0.0.1:8080/   |   .venv/bin/vmctl -f examples/quickstart.yaml exec worker -- uname -r"
  log "bringing up examples/app.yaml (web + cache + worker on the environment network)"
  .venv/bin/vmctl -f examples/app.yaml up
  .venv/bin/vmctl -f examples/app.yaml ps -a 2>/dev/null || true
  log "try: curl http://127.0.0.1:8090/cgi-bin/hits.cgi"
  log "done? .venv/bin/vmctl -f examples/quickstart.yaml down; .venv/bin/vmctl -f examples/app.yaml down"
}

run_tests() {
  # Every test, VM tests included (they boot real guests: TCG here, KVM where the host has it).
  exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
}

install_packages
python_env
case "${1:-quickstart}" in
  quickstart) quickstart ;;
  test) shift; run_tests "$@" ;;
  *) echo "usage: $0 [quickstart|test [pytest args]]" >&2; exit 2 ;;
esac
