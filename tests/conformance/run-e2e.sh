#!/usr/bin/env bash
# Runs specs of the upstream end-to-end suite (`e2e.test` of the cluster's release)
# against a cluster reachable with a kubeconfig, and prints which passed and failed.
#
#   tests/conformance/run-e2e.sh E2E_TEST KUBECONFIG [FOCUS] [SKIP]
#
# FOCUS and SKIP are ginkgo regular expressions (default: every [Conformance] spec of
# [sig-node] and [sig-network]; nothing skipped). The suite's images come from the
# registries named in the file KUBE_TEST_REPO_LIST names, when set (its format is
# e2e's: `gcRegistry: host:port/...` lines). REPORT_DIR (default: a new directory
# under /tmp) receives the JUnit report and the full log. Extra e2e.test flags can be
# passed in E2E_FLAGS.
set -euo pipefail

if [ $# -lt 2 ]; then
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
e2e=$1
kubeconfig=$2
focus=${3:-'\[sig-(node|network)\].*\[Conformance\]'}
skip=${4:-}
[ -x "$e2e" ] || { echo "$e2e is not an executable e2e.test" >&2; exit 2; }
[ -r "$kubeconfig" ] || { echo "cannot read kubeconfig $kubeconfig" >&2; exit 2; }
report=${REPORT_DIR:-$(mktemp -d /tmp/kernlet-e2e-XXXXXX)}
mkdir -p "$report"

args=(
    --kubeconfig="$kubeconfig"
    --provider=skeleton
    --report-dir="$report"
    --ginkgo.focus="$focus"
    --ginkgo.no-color
    --ginkgo.silence-skips
    --ginkgo.timeout=6h
)
[ -n "$skip" ] && args+=(--ginkgo.skip="$skip")
# shellcheck disable=SC2206
[ -n "${E2E_FLAGS:-}" ] && args+=(${E2E_FLAGS})

echo "e2e: $e2e (focus: $focus${skip:+; skip: $skip}); report in $report" >&2
set +e
"$e2e" "${args[@]}" 2>&1 | tee "$report/e2e.log"
status=${PIPESTATUS[0]}
set -e

# Pass and fail lists from the JUnit report.
for junit in "$report"/junit*.xml; do
    [ -f "$junit" ] || continue
    python3 - "$junit" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
passed, failed = [], []
for case in root.iter("testcase"):
    name = case.get("name", "")
    if case.find("skipped") is not None:
        continue
    (failed if case.find("failure") is not None or case.find("error") is not None else passed).append(name)
# Suite-level nodes (BeforeSuite, reports) are not specs.
spec = lambda n: n.startswith("[It]")
passed, failed = [n for n in passed if spec(n)], [n for n in failed if spec(n)]
for n in sorted(passed):
    print("PASS", n)
for n in sorted(failed):
    print("FAIL", n)
print(f"{len(passed)} passed, {len(failed)} failed")
PY
done
exit "$status"
