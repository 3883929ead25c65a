#!/usr/bin/env bash
# Brings up a Docker engine (with gVisor's runsc registered) and builds the sandbox
# images. Idempotent: does nothing that is already done. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'ci_docker: %s\n' "$*" >&2; }

engine_answers() { timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if ! command -v dockerd >/dev/null || ! command -v runsc >/dev/null \
    || ! command -v debootstrap >/dev/null; then
    log "installing docker.io, runsc, debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq docker.io runsc debootstrap >/dev/null
fi

# runsc needs --network=none here: the sandbox never has a network, and gVisor's own
# netstack set-up fails for network_mode=none containers without it.
python3 - <<'PY'
import json, pathlib, shutil
path = pathlib.Path("/etc/docker/daemon.json")
config = json.loads(path.read_text()) if path.exists() and path.read_text().strip() else {}
runsc = shutil.which("runsc") or "/usr/bin/runsc"
want = {"path": runsc, "runtimeArgs": ["--network=none"]}
if config.get("runtimes", {}).get("runsc") != want:
    config.setdefault("runtimes", {})["runsc"] = want
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")
    print("ci_docker: registered runsc in", path)
PY

if ! engine_answers; then
    if pgrep -x dockerd >/dev/null; then
        log "dockerd runs but does not answer; waiting"
    else
        log "starting dockerd"
        nohup dockerd >/var/log/dockerd.log 2>&1 &
    fi
    for _ in $(seq 1 60); do
        engine_answers && break
        sleep 1
    done
    engine_answers || { log "dockerd did not come up; see /var/log/dockerd.log"; exit 1; }
fi
# A dockerd started before runsc was registered does not know it; reload its config.
if ! docker info --format '{{json .Runtimes}}' | grep -q runsc; then
    log "reloading dockerd so it sees runsc"
    kill -HUP "$(cat /var/run/docker.pid)" || true
    sleep 2
fi
log "engine $(docker version --format '{{.Server.Version}}') up"

make image
