#!/usr/bin/env bash
# reforge_rig.sh - a CPU-only, offline reForge webui (Panchovix/stable-diffusion-webui-reForge) as a test host.
#
# 'setup' lays reForge and the five repositories its launcher pins out of bare git mirrors and makes its
# own venv with its requirements from the package index. start/stop/status/smoke are forge_rig.sh's
# (same FORGE_ROOT layout: webui/, venv/, logs/, run/). No reForge code is copied anywhere.
#
# Usage:
#   reforge_rig.sh setup|start|stop|status|smoke
#
# Settings (environment variables), besides forge_rig.sh's for start/stop:
#   FORGE_ROOT        target folder; required
#   FORGE_MIRRORS     folder holding bare mirrors as OWNER+NAME/repo
#   REFORGE_REPO      reForge mirror (default $FORGE_MIRRORS/Panchovix+stable-diffusion-webui-reForge/repo)
#   REFORGE_REF       reForge commit/branch (default main)
#   REFORGE_SD_REPO   stand-in mirror for the 'stable_diffusion' pin when its repository has no mirror
#                     (default $FORGE_MIRRORS/Stability-AI+stablediffusion/repo)
#   REFORGE_SD_COMMIT commit of that stand-in (default cf1d67a6fd5e, upstream's last commit, A1111's pin)
#   FORGE_PYTHON_BIN  interpreter for the venv, 3.10 or 3.11 (default python3.10)
#   FORGE_TORCH       torch pins (default "torch==2.14.1 torchvision==0.29.1"; reForge installs 2.9.0)
#   FORGE_SD15_CKPT / FORGE_SDXL_CKPT   checkpoint files to link into models/Stable-diffusion (optional)
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
die() { echo "reforge_rig: $*" >&2; exit 1; }
log() { echo "[reforge_rig] $*"; }

CMD="${1:-}"
[[ "$CMD" == setup ]] || exec "$HERE/forge_rig.sh" "$@"
[[ -n "${FORGE_ROOT:-}" ]] || die "set FORGE_ROOT to the folder to lay reForge out in"
ROOT="$(mkdir -p "$FORGE_ROOT" && cd "$FORGE_ROOT" && pwd)"
WEBUI="$ROOT/webui"
VENV="$ROOT/venv"
PY="$VENV/bin/python"
LOGS="$ROOT/logs"
MIRRORS="${FORGE_MIRRORS:-}"

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
    ((${#excludes[@]})) && log "  ${#excludes[@]} blob(s) missing in $mirror, skipped: ${excludes[*]#:(exclude)}"
    mkdir -p "$dest"
    git -C "$mirror" archive --format=tar "$commit" -- . "${excludes[@]}" 2>/dev/null | tar -x -C "$dest"
    echo "$commit" >"$dest/.rig-commit"
}

fresh() { [[ -f "$1/.rig-commit" && "$(cat "$1/.rig-commit")" == "$2" ]]; }

layout() {
    local repo="${REFORGE_REPO:-$MIRRORS/Panchovix+stable-diffusion-webui-reForge/repo}"
    [[ -d "$repo" ]] || die "reForge mirror not found: $repo (set FORGE_MIRRORS or REFORGE_REPO)"
    local commit
    commit="$(git -C "$repo" rev-parse "${REFORGE_REF:-main}^{commit}")"
    if fresh "$WEBUI" "$commit"; then
        log "reForge $commit already laid out"
    else
        log "laying out reForge $commit -> $WEBUI"
        export_tree "$repo" "$commit" "$WEBUI"
    fi
    # repositories/: the URLs and commits modules/launch_utils.py pins (git_clone calls)
    local lu="$WEBUI/modules/launch_utils.py" entry dir var url hash slug mirror dest
    for entry in stable-diffusion-webui-assets:assets stable-diffusion-stability-ai:stable_diffusion \
        generative-models:stable_diffusion_xl k-diffusion:k_diffusion BLIP:blip; do
        dir="${entry%%:*}" var="${entry#*:}"
        url="$(grep -oE "^ *${var}_repo = os.environ.get\([^,]+, *['\"][^'\"]+" "$lu" | sed -E "s/.*['\"]//")"
        hash="$(grep -oE "^ *${var}_commit_hash = os.environ.get\([^,]+, *['\"][0-9a-f]{40}" "$lu" | grep -oE '[0-9a-f]{40}$')"
        [[ -n "$url" && -n "$hash" ]] || die "cannot read the $dir pin from $lu"
        slug="$(sed -E 's#^https?://github.com/##; s#\.git$##; s#/#+#' <<<"$url")"
        mirror="$MIRRORS/$slug/repo"
        if [[ "$var" == stable_diffusion && ! -d "$mirror" ]]; then
            # reForge pins a fork of Stability-AI/stablediffusion (upstream was deleted); its 'ldm' package
            # is only imported for SD 1.x/2.x configs, which upstream's last commit provides as well.
            log "no mirror of $url; using a stand-in for repositories/$dir"
            mirror="${REFORGE_SD_REPO:-$MIRRORS/Stability-AI+stablediffusion/repo}"
            hash="${REFORGE_SD_COMMIT:-cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf}"
        fi
        [[ -d "$mirror" ]] || die "mirror for $url not found: $mirror"
        dest="$WEBUI/repositories/$dir"
        if fresh "$dest" "$hash"; then
            log "repositories/$dir @ ${hash:0:10} present"
        else
            rm -rf "$dest"
            log "repositories/$dir <- $mirror @ ${hash:0:10}"
            export_tree "$mirror" "$hash" "$dest"
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
    # requirements_versions.txt with three changes: torch 2.14 needs setuptools >= 77 (< 81 keeps
    # pkg_resources); reForge's pydantic is a wheel on a GitHub release page, replaced by the same version
    # from the package index; openai-clip is PyPI's packaging of the CLIP zip the launcher would fetch.
    sed -E -e 's/^setuptools==[0-9.]+.*/setuptools>=77.0.3,<81/' \
        -e 's#^https://github.com/Panchovix/pydantic-fixreforge/.*/pydantic-([0-9.]+)-.*#pydantic==\1#' \
        "$WEBUI/requirements_versions.txt" >"$ROOT/requirements_rig.txt"
    grep -q '^https\?://' "$ROOT/requirements_rig.txt" && die "a requirement is a URL: $ROOT/requirements_rig.txt"
    log "installing $torch_spec and reForge's requirements (log: $LOGS/pip.log)"
    local empty
    empty="$(mktemp -d)"
    # shellcheck disable=SC2086
    PIP_FIND_LINKS="$empty" "$PY" -m pip install -r "$ROOT/requirements_rig.txt" $torch_spec \
        openai-clip==1.0.1 >"$LOGS/pip.log" 2>&1 || { tail -30 "$LOGS/pip.log"; die "pip install failed"; }
    rmdir "$empty"
    "$PY" -m pip check >"$LOGS/pip_check.log" 2>&1 || log "pip check reports issues: $LOGS/pip_check.log"
}

link_checkpoints() {
    local dir="$WEBUI/models/Stable-diffusion" f
    mkdir -p "$dir"
    for f in "${FORGE_SD15_CKPT:-}" "${FORGE_SDXL_CKPT:-}"; do
        [[ -n "$f" ]] || continue
        [[ -f "$f" ]] || die "checkpoint not found: $f"
        ln -sfn "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$dir/$(basename "$f")"
        log "linked $(basename "$f")"
    done
}

t0=$SECONDS
layout
install_venv
link_checkpoints
mkdir -p "$LOGS" "$ROOT/run"
log "setup done in $(((SECONDS - t0) / 60)) min $(((SECONDS - t0) % 60)) s: $ROOT"
