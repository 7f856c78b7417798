#!/usr/bin/env bash
# CI step (called by .ci/run after the tests): build csc_api_pipeline.exe under wine, one file
# and one folder, and smoke-test both. Fails loudly, never skips: if wine cannot run here,
# the build script says why and this step fails.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(date +%s)
bash packaging/build_windows_exe.sh --both
built=$(date +%s)

bash packaging/smoke_test_exe.sh dist/windows/csc_api_pipeline.exe
bash packaging/smoke_test_exe.sh dist/windows/csc_api_pipeline/csc_api_pipeline.exe
done_at=$(date +%s)

echo "windows exe: built in $((built - started)) s, smoke-tested in $((done_at - built)) s"
