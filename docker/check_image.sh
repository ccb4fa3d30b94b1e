#!/usr/bin/env bash
# The image, built and run for real: `make docker-check` (README, "Docker").
#
# tests/test_docker.py checks docker/ statically; a missing file, a wrong path or a
# permission in the image shows up only when it is built and run. This script does that,
# as a new user would, and is slow (the image holds torch's CUDA wheels), so it is not
# part of `make test` or CI:
#
#  1. installs a Docker engine, debootstrap and Debian's docker-compose when missing, and
#     starts dockerd when none runs (as root: it re-runs itself with `sudo -n` otherwise);
#  2. when the Dockerfile's base image can neither be found nor pulled (no registry), makes
#     a stand-in of it from Debian bookworm, with `python` and `pip` on the PATH from a venv
#     as the official image has them, tagged with the name the Dockerfile's FROM expects;
#  3. builds docker/Dockerfile, handing pip's CA bundle (PIP_CERT, or pip's `cert` setting)
#     in as the build secret pip_cert when there is one;
#  4. runs the image with a named model volume and a read-only folder of local files, waits
#     for its HEALTHCHECK to report healthy, sends one /predict and one /webhook, stops it;
#  5. checks the two ways of running it on a host folder: one the service cannot write must
#     stop it at once with the reason; one owned by `--user` must serve;
#  6. runs compose's ml-backend service the same way (Label Studio's image is not started).
#
# It removes its containers, volumes and files; the image and the base stay, so that a
# rerun is cached (NO_CACHE=1 builds from scratch). Prints image size, build time and
# seconds to healthy.
set -euo pipefail

if [[ $EUID -ne 0 ]]; then  # dockerd, debootstrap and apt-get need root
    command -v sudo >/dev/null || { echo "run it as root: dockerd, debootstrap and apt-get need root" >&2; exit 1; }
    exec sudo -n -E "$0" "$@"
fi

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/var/tmp/hua-docker-check}
IMAGE=hua-backend:latest  # the name docker/docker-compose.yml gives the image
PREFIX=hua-check          # of every container, volume and compose project made here
STANDIN_LABEL=hua-backend.stand-in
PASS=check-pass           # basic auth on, so that the HEALTHCHECK sends the pair
LABEL_CONFIG='<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image"><Label value="person"/><Label value="car"/></RectangleLabels></View>'

log() { printf '\n== %s\n' "$*"; }
fail() { echo "FAILED: $*" >&2; exit 1; }

# --- 1. tools and engine ----------------------------------------------------------------

install_missing() {
    local packages=()
    command -v dockerd >/dev/null || packages+=(docker.io)
    command -v debootstrap >/dev/null || packages+=(debootstrap)
    command -v docker-compose >/dev/null || packages+=(docker-compose)
    [[ ${#packages[@]} -eq 0 ]] && return
    log "installing ${packages[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}"
}

start_engine() {
    docker info >/dev/null 2>&1 && return
    log "starting dockerd (log: /tmp/dockerd.log)"
    dockerd > /tmp/dockerd.log 2>&1 &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && return; sleep 1; done
    fail "dockerd did not start: see /tmp/dockerd.log"
}

# The Dockerfile's `RUN --mount` needs BuildKit. A docker CLI of 23 or newer builds with
# it only through the buildx plugin; a 20.10 client (Debian's docker.io) has it built in.
select_cli() {
    local cli
    for cli in "$(command -v docker)" /usr/bin/docker; do
        [[ -x $cli ]] || continue
        if "$cli" buildx version >/dev/null 2>&1 || [[ $("$cli" version -f '{{.Client.Version}}' 2>/dev/null) == 20.* ]]; then
            PATH="$(dirname "$cli"):$PATH"  # docker-compose's builds call `docker` too
            export PATH DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1
            return
        fi
    done
    fail "no docker CLI that builds with BuildKit: install the buildx plugin"
}

# --- 2. the base image ------------------------------------------------------------------

# FROM's image name, with the ARG defaults above it filled in.
base_image() {
    python3 - "$REPO/docker/Dockerfile" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
args = dict(re.findall(r"^ARG (\w+)=(\S+)", text.split("\nFROM ")[0], re.M))
image = re.search(r"^FROM (\S+)", text, re.M).group(1)
print(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image))
EOF
}

ensure_base() {
    local base=$1
    if docker image inspect "$base" >/dev/null 2>&1; then
        echo "base image: $base (found)"
    elif docker pull "$base" >/dev/null 2>&1; then
        echo "base image: $base (pulled)"
    else
        make_standin "$base"
    fi
}

# Debian bookworm's python3 is 3.11: a stand-in for python:3.11-*-bookworm only.
make_standin() {
    local base=$1 rootfs="$WORK/rootfs"
    [[ $base =~ ^python:3\.11-.*bookworm$ ]] || fail "$base cannot be pulled, and only python:3.11-*bookworm has a stand-in"
    log "$base cannot be pulled: making a stand-in from Debian bookworm (debootstrap)"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" >"$WORK/debootstrap.log" \
        || fail "debootstrap: see $WORK/debootstrap.log"
    chroot "$rootfs" python3 -m venv /opt/python  # Debian's own python3 refuses pip installs (PEP 668)
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change "LABEL $STANDIN_LABEL=debootstrap" --change 'CMD ["python3"]' \
        - "$base" >/dev/null
    rm -rf "$rootfs"
}

# --- 3. the build -----------------------------------------------------------------------

pip_cert() {
    local cert=${PIP_CERT:-}
    if [[ -z $cert ]] && command -v pip >/dev/null; then
        cert=$(pip config get global.cert 2>/dev/null || true)
    fi
    [[ -f $cert ]] && echo "$cert"
}

build_image() {
    local cert args=()
    cert=$(pip_cert) && args+=(--secret "id=pip_cert,src=$cert") && echo "pip's CA bundle: $cert"
    [[ -z ${NO_CACHE:-} ]] || args+=(--no-cache)
    log "building $IMAGE from docker/Dockerfile (log: $WORK/build.log)"
    local start=$SECONDS
    docker build --progress=plain "${args[@]}" -f "$REPO/docker/Dockerfile" -t "$IMAGE" "$REPO" >"$WORK/build.log" 2>&1 \
        || { tail -30 "$WORK/build.log"; fail "docker build"; }
    BUILD_SECONDS=$((SECONDS - start))
    IMAGE_SIZE=$(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1 / 1e9}')
    echo "built in ${BUILD_SECONDS} s; image size $IMAGE_SIZE"
}

# --- 4. one running container -----------------------------------------------------------

# A JPEG under WORK/files/check/, written by the image's own Pillow as this user.
make_local_image() {
    mkdir -p "$WORK/files/check"
    docker run --rm --user "$(id -u):$(id -g)" -v "$WORK/files:/files" "$IMAGE" python -c \
        "from PIL import Image, ImageDraw; i = Image.new('RGB', (640, 480), 'gray'); ImageDraw.Draw(i).rectangle((200, 120, 440, 360), fill='red'); i.save('/files/check/scene.jpg')"
}

# Seconds from `start` until the container's HEALTHCHECK says healthy; fails on unhealthy or exit.
wait_healthy() {
    local container=$1 start=$2 status
    while (( SECONDS - start < 300 )); do
        status=$(docker inspect -f '{{.State.Status}} {{.State.Health.Status}}' "$container")
        case $status in
            "running healthy") echo $((SECONDS - start)); return ;;
            *unhealthy|exited*|dead*) docker logs --tail 30 "$container" >&2; fail "$container: $status" ;;
        esac
        sleep 1
    done
    fail "$container: not healthy after 300 s"
}

# Seconds from `start` until /health answers 200 (before the HEALTHCHECK's first probe).
wait_answering() {
    local port=$1 start=$2
    until curl -sf -m 2 -u "check:$PASS" -o /dev/null "http://127.0.0.1:$port/health"; do
        (( SECONDS - start < 300 )) || fail "/health did not answer within 300 s"
        sleep 0.5
    done
    echo $((SECONDS - start))
}

# POST a JSON body; prints the answer, fails unless the status is the expected one.
post() {
    local port=$1 route=$2 body=$3 expected=$4 answer
    answer=$(curl -s -m 120 -u "check:$PASS" -H 'Content-Type: application/json' -d "$body" -w '\n%{http_code}' "http://127.0.0.1:$port$route")
    [[ ${answer##*$'\n'} == "$expected" ]] || fail "POST $route answered ${answer##*$'\n'}: ${answer%$'\n'*}"
    echo "${answer%$'\n'*}"
}

# One /predict of the local image (it must be read: a task that failed has score null) and
# one START_TRAINING webhook, whose job process must run and record an outcome in MODEL_DIR.
exercise() {
    local port=$1 task answer webhook
    task="{\"id\": 1, \"data\": {\"image\": \"/data/local-files/?d=check/scene.jpg\"}}"
    answer=$(post "$port" /predict "$(python3 -c 'import json, sys; print(json.dumps({"project": "1.1700000000", "label_config": sys.argv[1], "tasks": [json.loads(sys.argv[2])]}))' "$LABEL_CONFIG" "$task")" 200)
    python3 -c 'import json, sys; r = json.loads(sys.argv[1])["results"]; assert len(r) == 1 and r[0]["score"] is not None, r' "$answer" \
        || fail "/predict did not predict the local image: $answer"
    echo "/predict: $answer"
    webhook=$(post "$port" /webhook '{"action": "START_TRAINING", "project": {"id": 1}}' 202)
    echo "/webhook: $webhook"
    for _ in $(seq 120); do
        answer=$(curl -s -u "check:$PASS" "http://127.0.0.1:$port/jobs")
        if python3 -c 'import json, sys; j = json.loads(sys.argv[1])["jobs"]["1"]["train"]; sys.exit(j["finished"] is None)' "$answer" 2>/dev/null; then
            echo "/jobs: $answer"; return
        fi
        sleep 1
    done
    fail "the training job recorded no outcome: $answer"
}

# docker stop sends SIGTERM to gunicorn (PID 1); it must exit 0.
stop_cleanly() {
    local container=$1
    docker stop "$container" >/dev/null
    [[ $(docker inspect -f '{{.State.ExitCode}}' "$container") == 0 ]] || { docker logs --tail 20 "$container"; fail "$container exited non-zero on SIGTERM"; }
}

check_image() {
    local name="$PREFIX-backend" port start answering
    log "running $IMAGE with the volume $PREFIX-models"
    docker volume create "$PREFIX-models" >/dev/null
    start=$SECONDS
    docker run -d --name "$name" -p 127.0.0.1::9090 -v "$PREFIX-models:/data/models" \
        -v "$WORK/files:/label-studio/files:ro" -e LOCAL_FILES_DOCUMENT_ROOT=/label-studio/files \
        -e BASIC_AUTH_USER=check -e BASIC_AUTH_PASS="$PASS" -e LABEL_STUDIO_URL=http://127.0.0.1:9 "$IMAGE" >/dev/null
    port=$(docker port "$name" 9090/tcp | head -1 | sed 's/.*://')
    answering=$(wait_answering "$port" "$start")
    HEALTHY_SECONDS=$(wait_healthy "$name" "$start")
    echo "/health answered after $answering s; HEALTHCHECK healthy after $HEALTHY_SECONDS s"
    exercise "$port"
    stop_cleanly "$name"
}

# --- 5. a host folder as MODEL_DIR --------------------------------------------------------

check_host_folders() {
    local seconds start
    log "a host folder the service cannot write, as MODEL_DIR"
    mkdir -p "$WORK/unwritable" && chmod 555 "$WORK/unwritable"
    timeout 120 docker run --name "$PREFIX-unwritable" -v "$WORK/unwritable:/data/models" "$IMAGE" >"$WORK/unwritable.log" 2>&1 \
        && fail "the service started on a MODEL_DIR it cannot write"
    grep -q "MODEL_DIR /data/models is not writable" "$WORK/unwritable.log" || { cat "$WORK/unwritable.log"; fail "no reason given"; }
    grep "not writable" "$WORK/unwritable.log"

    log "a host folder owned by the container's --user, as MODEL_DIR"
    mkdir -p "$WORK/owned" && chown 12345:12345 "$WORK/owned"
    start=$SECONDS
    docker run -d --name "$PREFIX-user" --user 12345:12345 -v "$WORK/owned:/data/models" "$IMAGE" >/dev/null
    seconds=$(wait_healthy "$PREFIX-user" "$start")
    echo "healthy after $seconds s"
    ! docker logs "$PREFIX-user" 2>&1 | grep -E "ERROR|Traceback" || fail "errors in the log of a --user run"
    stop_cleanly "$PREFIX-user"
}

# --- 6. compose -------------------------------------------------------------------------

# `docker compose` (v2) runs the files as they are; Debian's docker-compose 1.29 cannot read
# them (top-level `name`, the CPU override's `!reset`), so it gets the ml-backend service
# alone, as written, less the GPU reservation that the CPU override removes.
compose_files() {
    if docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose -f "$REPO/docker/docker-compose.yml")
        docker info -f '{{json .Runtimes}}' | grep -q nvidia || COMPOSE+=(-f "$REPO/docker/docker-compose.cpu.yml")
        return
    fi
    echo "Debian's docker-compose $(docker-compose version --short) cannot read docker/docker-compose.yml:"
    docker-compose -f "$REPO/docker/docker-compose.yml" config -q 2>&1 | head -2 | sed 's/^/    /' || true
    echo "so it runs ml-backend from the same file less its top-level name and GPU reservation"
    python3 - "$REPO/docker/docker-compose.yml" >"$WORK/compose-ml-backend.yml" <<'EOF'
import sys, yaml
compose = yaml.safe_load(open(sys.argv[1]))
backend = compose["services"]["ml-backend"]
del backend["deploy"]                       # what docker-compose.cpu.yml resets...
backend["environment"]["DEVICE"] = "cpu"    # ...and sets
print(yaml.safe_dump({"services": {"ml-backend": backend}, "volumes": compose["volumes"]}))
EOF
    COMPOSE=(docker-compose --project-directory "$REPO/docker" -f "$WORK/compose-ml-backend.yml")
}

check_compose() {
    log "compose: the ml-backend service (Label Studio's image cannot be pulled without a registry: not started)"
    compose_files
    COMPOSE+=(-p "$PREFIX")
    local port container start
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    export ML_BACKEND_PORT=$port LOCAL_FILES_DIR="$WORK/files" BASIC_AUTH_USER=check BASIC_AUTH_PASS="$PASS"
    "${COMPOSE[@]}" build ml-backend >"$WORK/compose-build.log" 2>&1 || { tail -20 "$WORK/compose-build.log"; fail "compose build"; }
    start=$SECONDS
    "${COMPOSE[@]}" up -d --no-deps ml-backend 2>&1 | tail -1
    container=$("${COMPOSE[@]}" ps -q ml-backend)
    COMPOSE_HEALTHY_SECONDS=$(wait_healthy "$container" "$start")
    echo "healthy after $COMPOSE_HEALTHY_SECONDS s"
    exercise "$port"
    stop_cleanly "$container"
}

# --- cleanup and main ---------------------------------------------------------------------

cleanup() {
    docker rm -f "$PREFIX-backend" "$PREFIX-unwritable" "$PREFIX-user" >/dev/null 2>&1 || true
    [[ -z ${COMPOSE+x} ]] || "${COMPOSE[@]}" down -v >/dev/null 2>&1 || true
    docker volume rm "$PREFIX-models" >/dev/null 2>&1 || true
    rm -rf "$WORK/files" "$WORK/unwritable" "$WORK/owned" "$WORK/rootfs"
}

main() {
    mkdir -p "$WORK"
    install_missing
    start_engine
    select_cli
    trap cleanup EXIT
    ensure_base "$(base_image)"
    build_image
    make_local_image
    check_image
    check_host_folders
    check_compose
    log "passed: image $IMAGE_SIZE, built in $BUILD_SECONDS s, healthy after $HEALTHY_SECONDS s (compose's service: $COMPOSE_HEALTHY_SECONDS s)"
}

main "$@"
