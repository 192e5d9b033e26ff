#!/usr/bin/env bash
# forge_rig.sh - a CPU-only, offline Forge webui (lllyasviel/stable-diffusion-webui-forge) as a test host.
#
# Lays Forge and the repositories its launcher pins out of bare git mirrors, makes its own venv with
# its requirements from the package index, links checkpoints in, and starts/stops the server on
# 127.0.0.1 only. It never copies Forge code anywhere: it exports, installs and launches it.
#
# Usage:
#   forge_rig.sh COMMAND
#
# Commands:
#   setup    lay out FORGE_ROOT/webui (+ repositories/), FORGE_ROOT/venv, link checkpoints
#   start    start Forge in the background (UI + API), wait until the checkpoint is loaded
#   stop     stop the Forge whose PID 'start' recorded (nothing else is touched)
#   status   PID, URL and RSS of the recorded server
#   smoke    POST /sdapi/v1/txt2img (2 steps) on the loaded checkpoint, print time and RSS
#
# Settings (environment variables):
#   FORGE_ROOT        target folder (webui/, venv/, logs/, run/); required
#   FORGE_MIRRORS     folder holding bare mirrors as OWNER+NAME/repo (setup only): Forge, huggingface_guess,
#                     stable-diffusion-webui-assets, BLIP
#   FORGE_REPO        Forge mirror (default $FORGE_MIRRORS/lllyasviel+stable-diffusion-webui-forge/repo)
#   FORGE_REF         Forge commit/branch (default main)
#   FORGE_PYTHON_BIN  interpreter for the venv, 3.10 or 3.11 (default python3.10)
#   FORGE_TORCH       torch pins (default "torch==2.14.1 torchvision==0.29.1"; Forge pins 2.3.1 for CUDA 12.1)
#   FORGE_SD15_CKPT   SD 1.5 checkpoint file to link into models/Stable-diffusion (optional)
#   FORGE_SDXL_CKPT   SDXL checkpoint file to link in (optional)
#   FORGE_PORT        port on 127.0.0.1 (default 7862)
#   FORGE_CKPT        checkpoint file name loaded at start (default: basename of FORGE_SD15_CKPT)
#   FORGE_FP8         1 = store the UNet in fp8 (--unet-in-fp8-e4m3fn; needed for SDXL in 24 GiB of RAM)
#   FORGE_DATA_DIR    --data-dir (optional; --gradio-allowed-path is then set to the Forge folder)
#   FORGE_EXTRA_ARGS  extra Forge flags (anything that would bind beyond loopback is refused)
#   FORGE_START_TIMEOUT  seconds to wait for the model (default 900)
#   HF_HOME           passed on; the run is offline (HF_HUB_OFFLINE=1)
set -euo pipefail

die() { echo "forge_rig: $*" >&2; exit 1; }
log() { echo "[forge_rig] $*"; }

CMD="${1:-}"
[[ -n "$CMD" && "$CMD" != -h && "$CMD" != --help ]] || {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0; }
[[ -n "${FORGE_ROOT:-}" ]] || die "set FORGE_ROOT to the folder to lay Forge out in"
ROOT="$(mkdir -p "$FORGE_ROOT" && cd "$FORGE_ROOT" && pwd)"
WEBUI="$ROOT/webui"
VENV="$ROOT/venv"
PY="$VENV/bin/python"
LOGS="$ROOT/logs"
RUN="$ROOT/run"
PIDFILE="$RUN/forge.pid"
PORT="${FORGE_PORT:-7862}"
URL="http://127.0.0.1:$PORT"
CKPT_DIR="$WEBUI/models/Stable-diffusion"

offline_env() {
    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
    export GRADIO_ANALYTICS_ENABLED=False DO_NOT_TRACK=1 DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1
}

# ---------------------------------------------------------------- setup --

# export COMMIT of a bare mirror into DEST (skipping blobs a partial mirror lacks)
export_tree() {
    local mirror="$1" commit="$2" dest="$3"
    git -C "$mirror" cat-file -e "$commit^{commit}" 2>/dev/null || die "commit $commit not in $mirror"
    local -a excludes=()
    local meta path mode type hash
    while IFS=$'\t' read -r meta path; do
        read -r mode type hash <<<"$meta"
        [[ "$type" == blob ]] || continue
        git -C "$mirror" cat-file -e "$hash" 2>/dev/null || excludes+=(":(exclude)$path")
    done < <(git -C "$mirror" ls-tree -r "$commit")
    ((${#excludes[@]})) && log "  ${#excludes[@]} blob(s) missing in $mirror, skipped"
    mkdir -p "$dest"
    git -C "$mirror" archive --format=tar "$commit" -- . "${excludes[@]}" 2>/dev/null | tar -x -C "$dest"
    echo "$commit" >"$dest/.rig-commit"
}

fresh() { [[ -f "$1/.rig-commit" && "$(cat "$1/.rig-commit")" == "$2" ]]; }

layout() {
    local mirrors="${FORGE_MIRRORS:-}"
    local repo="${FORGE_REPO:-$mirrors/lllyasviel+stable-diffusion-webui-forge/repo}"
    [[ -d "$repo" ]] || die "Forge mirror not found: $repo (set FORGE_MIRRORS or FORGE_REPO)"
    local commit
    commit="$(git -C "$repo" rev-parse "${FORGE_REF:-main}^{commit}")"
    if fresh "$WEBUI" "$commit"; then
        log "Forge $commit already laid out"
    else
        log "laying out Forge $commit -> $WEBUI"
        export_tree "$repo" "$commit" "$WEBUI"
    fi
    # repositories/: the URLs and commits modules/launch_utils.py pins (git_clone calls)
    local lu="$WEBUI/modules/launch_utils.py" name var url hash slug dest
    for name in stable-diffusion-webui-assets:assets huggingface_guess:huggingface_guess BLIP:blip; do
        var="${name#*:}"
        name="${name%%:*}"
        url="$(grep -oE "${var}_repo = os.environ.get\([^,]+, *['\"][^'\"]+" "$lu" | sed -E "s/.*['\"]//")"
        hash="$(grep -oE "${var}_commit_hash = os.environ.get\([^,]+, *['\"][0-9a-f]{40}" "$lu" | grep -oE '[0-9a-f]{40}$')"
        [[ -n "$url" && -n "$hash" ]] || die "cannot read the $name pin from $lu"
        slug="$(sed -E 's#^https?://github.com/##; s#\.git$##; s#/#+#' <<<"$url")"
        dest="$WEBUI/repositories/$name"
        if fresh "$dest" "$hash"; then
            log "repositories/$name @ ${hash:0:10} present"
        else
            [[ -d "$mirrors/$slug/repo" ]] || die "mirror for $url not found: $mirrors/$slug/repo"
            rm -rf "$dest"
            log "repositories/$name <- $slug @ ${hash:0:10}"
            export_tree "$mirrors/$slug/repo" "$hash" "$dest"
        fi
    done
}

install_venv() {
    local python="${FORGE_PYTHON_BIN:-python3.10}"
    "$python" -c 'import sys; assert sys.version_info[:2] in ((3, 10), (3, 11))' 2>/dev/null \
        || die "$python is not Python 3.10/3.11 (set FORGE_PYTHON_BIN)"
    [[ -x "$PY" ]] || { log "creating venv with $python"; "$python" -m venv "$VENV"; }
    local torch_spec="${FORGE_TORCH:-torch==2.14.1 torchvision==0.29.1}"
    mkdir -p "$LOGS"
    # Forge pins setuptools 69.5.1, torch 2.14 needs >= 77; < 81 keeps pkg_resources for old packages.
    # Its 'torch' line stays unpinned: the pins come from FORGE_TORCH. openai-clip is PyPI's packaging of
    # the CLIP zip the launcher would fetch; joblib is imported by the soft-inpainting script (since dfdcbab6)
    # but missing from the requirements.
    sed -E 's/^setuptools==[0-9.]+.*/setuptools>=77.0.3,<81/' "$WEBUI/requirements_versions.txt" \
        >"$ROOT/requirements_rig.txt"
    log "installing $torch_spec and Forge's requirements (log: $LOGS/pip.log)"
    local empty
    empty="$(mktemp -d)"
    # shellcheck disable=SC2086
    PIP_FIND_LINKS="$empty" "$PY" -m pip install -r "$ROOT/requirements_rig.txt" $torch_spec \
        openai-clip==1.0.1 joblib >"$LOGS/pip.log" 2>&1 || { tail -30 "$LOGS/pip.log"; die "pip install failed"; }
    rmdir "$empty"
    "$PY" -m pip check >"$LOGS/pip_check.log" 2>&1 || log "pip check reports issues: $LOGS/pip_check.log"
}

link_checkpoints() {
    mkdir -p "$CKPT_DIR"
    local f
    for f in "${FORGE_SD15_CKPT:-}" "${FORGE_SDXL_CKPT:-}"; do
        [[ -n "$f" ]] || continue
        [[ -f "$f" ]] || die "checkpoint not found: $f"
        ln -sfn "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$CKPT_DIR/$(basename "$f")"
        log "linked $(basename "$f")"
    done
}

cmd_setup() {
    local t0=$SECONDS
    layout
    install_venv
    link_checkpoints
    mkdir -p "$LOGS" "$RUN"
    log "setup done in $(((SECONDS - t0) / 60)) min $(((SECONDS - t0) % 60)) s: $ROOT"
}

# ---------------------------------------------------------------- start/stop --

recorded_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(cat "$PIDFILE")"
    [[ -n "$pid" && -d "/proc/$pid" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "launch.py" || return 1  # guards against PID reuse
    [[ "$(readlink "/proc/$pid/cwd")" == "$WEBUI" ]] || return 1
    echo "$pid"
}

rss_mib() { echo $(($(awk '/VmRSS/{print $2}' "/proc/$1/status") / 1024)); }

cmd_start() {
    [[ -x "$PY" && -f "$WEBUI/launch.py" ]] || die "run setup first"
    if pid="$(recorded_pid)"; then die "already running as PID $pid ($URL)"; fi
    local extra="${FORGE_EXTRA_ARGS:-}"
    if grep -qE -- '--listen|--share|--server-name|--ngrok|--cloudflared' <<<"$extra"; then
        die "FORGE_EXTRA_ARGS must not bind beyond loopback: $extra"
    fi
    local ckpt="${FORGE_CKPT:-$(basename "${FORGE_SD15_CKPT:-}")}"
    [[ -n "$ckpt" && -e "$CKPT_DIR/$ckpt" ]] || die "no checkpoint '$ckpt' in $CKPT_DIR (set FORGE_CKPT)"
    # --always-cpu puts Forge's memory manager on the CPU (fp32 compute); --skip-prepare-environment
    # skips the launcher's pip and git steps, which would need the network.
    local -a args=(--skip-prepare-environment --skip-install --skip-torch-cuda-test --skip-version-check
                   --always-cpu --api --port "$PORT" --ckpt "$CKPT_DIR/$ckpt")
    [[ "${FORGE_FP8:-0}" == 1 ]] && args+=(--unet-in-fp8-e4m3fn)
    if [[ -n "${FORGE_DATA_DIR:-}" ]]; then
        args+=(--data-dir "$FORGE_DATA_DIR" --gradio-allowed-path "$WEBUI")
    fi
    # shellcheck disable=SC2206
    [[ -n "$extra" ]] && args+=($extra)
    mkdir -p "$LOGS" "$RUN"
    offline_env
    local logf="$LOGS/forge.log"
    : >"$logf"
    local t0=$SECONDS
    (cd "$WEBUI" && exec setsid nohup "$PY" launch.py "${args[@]}" >>"$logf" 2>&1 </dev/null) &
    local pid=$!
    echo "$pid" >"$PIDFILE"
    log "started PID $pid: $PY launch.py ${args[*]}"
    local timeout="${FORGE_START_TIMEOUT:-900}" http=0
    while ((SECONDS - t0 < timeout)); do
        sleep 2
        [[ -d "/proc/$pid" ]] || { tail -40 "$logf"; rm -f "$PIDFILE"; die "Forge exited during start-up"; }
        if ((!http)) && curl -fs -o /dev/null "$URL/sdapi/v1/sd-models"; then
            http=1
            log "HTTP up after $((SECONDS - t0)) s at $URL, RSS $(rss_mib "$pid") MiB"
        fi
        # Forge loads the checkpoint lazily: ask for it through the options route, as a page load does
        if ((http)) && grep -qE "Model loaded in|Startup time" "$logf"; then
            log "ready after $((SECONDS - t0)) s; RSS $(rss_mib "$pid") MiB; UI: $URL/ (loopback only)"
            return 0
        fi
    done
    die "not ready after ${timeout}s (PID $pid still running; see $logf)"
}

cmd_stop() {
    local pid
    if ! pid="$(recorded_pid)"; then log "no recorded running Forge"; rm -f "$PIDFILE"; return 0; fi
    log "stopping PID $pid"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do [[ -d "/proc/$pid" ]] || break; sleep 1; done
    [[ -d "/proc/$pid" ]] && { log "still alive after 30 s, sending KILL"; kill -KILL -- "-$pid" 2>/dev/null || true; }
    rm -f "$PIDFILE"
    log "stopped"
}

cmd_status() {
    local pid
    if pid="$(recorded_pid)"; then log "running: PID $pid, $URL, RSS $(rss_mib "$pid") MiB"; else log "not running"; fi
}

cmd_smoke() {
    local pid
    pid="$(recorded_pid)" || die "Forge is not running (start it first)"
    local t0=$SECONDS
    curl -fsS -X POST "$URL/sdapi/v1/txt2img" -H 'Content-Type: application/json' \
        -d '{"prompt": "a red apple", "steps": 2, "width": 64, "height": 64, "seed": 1, "sampler_name": "Euler"}' \
        | "$PY" -c 'import json, sys; r = json.load(sys.stdin); print("[forge_rig] images:", len(r["images"]), json.loads(r["info"])["infotexts"][0].splitlines()[-1][:200])'
    log "txt2img in $((SECONDS - t0)) s; RSS $(rss_mib "$pid") MiB"
}

case "$CMD" in
    setup) cmd_setup ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    smoke) cmd_smoke ;;
    *) die "unknown command $CMD (setup|start|stop|status|smoke)" ;;
esac
