#!/usr/bin/env bash
# Validates the deployment kit. Run from anywhere: bash deploy/check.sh
#
# Needs python3 with PyYAML and promtool (Debian: apt-get install prometheus).
# Also runs, when found on PATH: systemd-analyze, hadolint, kubernetes-validate.
# With CRMGATE_BIN=path/to/crmgate it also runs `crmgate check` on the
# Kubernetes ConfigMap's crmgate.toml, so the example cannot drift from the
# config the binary accepts.
set -euo pipefail
cd "$(dirname "$0")"

fail=0
step() { printf '== %s\n' "$*"; }
skip() { printf '   skipped: %s\n' "$*"; }
run() { "$@" || { printf '   FAILED: %s\n' "$*"; fail=1; }; }

step "grafana/crmgate.json is valid JSON"
run python3 -m json.tool grafana/crmgate.json >/dev/null

step "YAML files parse"
run python3 -c '
import sys, yaml
for path in sys.argv[1:]:
    with open(path) as f:
        list(yaml.safe_load_all(f))
' kubernetes/sidecar.yaml prometheus/alerts.yml prometheus/alerts_test.yml

step "promtool check rules / test rules"
if command -v promtool >/dev/null; then
  run promtool check rules prometheus/alerts.yml
  run promtool test rules prometheus/alerts_test.yml
else
  echo "   FAILED: promtool not found (apt-get install prometheus)"; fail=1
fi

step "systemd-analyze verify"
if command -v systemd-analyze >/dev/null; then
  # verify insists that ExecStart's binary exists; point it at a stand-in so
  # the check does not need crmgate installed in /usr/local/bin.
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  install -m 0755 /bin/true "$tmp/crmgate"
  sed "s|/usr/local/bin/crmgate|$tmp/crmgate|g" systemd/crmgate.service >"$tmp/crmgate.service"
  # It exits 0 on unknown or unparsable settings, so any output is a failure.
  if ! out=$(systemd-analyze verify "$tmp/crmgate.service" 2>&1) || [ -n "$out" ]; then
    printf '%s\n   FAILED: systemd-analyze verify\n' "$out"; fail=1
  fi
else
  skip "systemd-analyze not found"
fi

step "hadolint Dockerfile"
if command -v hadolint >/dev/null; then run hadolint Dockerfile; else skip "hadolint not found"; fi

step "kubernetes-validate --strict"
if command -v kubernetes-validate >/dev/null; then
  run kubernetes-validate --strict --quiet kubernetes/sidecar.yaml
else
  skip "kubernetes-validate not found (pip install kubernetes-validate)"
fi

step "crmgate check on the ConfigMap's crmgate.toml"
if [ -n "${CRMGATE_BIN:-}" ]; then
  cm=$(mktemp -d)
  python3 -c '
import sys, yaml
docs = yaml.safe_load_all(open("kubernetes/sidecar.yaml"))
cm = next(d for d in docs if d["kind"] == "ConfigMap")
sys.stdout.write(cm["data"]["crmgate.toml"])
' >"$cm/crmgate.toml"
  # The config names key files of the mounted Secret: stand in for them with
  # private dummies (distinct, as client keys must be unique).
  for name in $(grep -o '/run/secrets/crmgate/[A-Za-z0-9_.-]*' "$cm/crmgate.toml" | sort -u); do
    (umask 077 && echo "dummy-$(basename "$name")" >"$cm/$(basename "$name")")
  done
  sed -i "s|/run/secrets/crmgate/|$cm/|g" "$cm/crmgate.toml"
  CRMGATE_ADMIN_TOKEN=dummy-admin-token-0000 run "$CRMGATE_BIN" check --config "$cm/crmgate.toml"
  rm -rf "$cm"
else
  skip "set CRMGATE_BIN to the built binary"
fi

if [ "$fail" -ne 0 ]; then echo "deploy checks: FAILED"; exit 1; fi
echo "deploy checks: all passed"
