#!/usr/bin/env bash
# Re-record the example pcap sets in captures/examples/ that the notebooks and the unit
# tests read, then run the notebooks again so their committed outputs show the new sets.
# Anyone can run it (as root, after scripts/setup.sh): it brings the lab up and records
# each set with flowtrace itself.  The NAT sets also keep the host's nat table as
# `iptables-save -t nat` printed it right after the trace (nat-rules.txt): the pcapng
# holds the rewrites but not the rules, and the notebooks attribute them offline.
#
#   scripts/record-examples.sh                   record the sets, then run the notebooks
#   scripts/record-examples.sh --notebooks-only  only run the notebooks (no root needed)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Relative paths: each manifest records its command, and it should read the same anywhere.
OUT=captures/examples
FLOWTRACE=.venv/bin/flowtrace
PYTHON=.venv/bin/python

say() { printf 'record-examples: %s\n' "$*"; }
die() {
    printf 'record-examples: error: %s\n' "$*" >&2
    exit 1
}

# Execute every notebook top to bottom and save it with its outputs.  nbclient directly
# rather than `jupyter execute --inplace`, which stamps each cell with execution times
# and so changes every cell on every run.
run_notebooks() {
    "$PYTHON" - notebooks/*.ipynb <<'EOF'
import sys

import nbformat
from nbclient import NotebookClient

for name in sys.argv[1:]:
    notebook = nbformat.read(name, as_version=4)
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)  # timings left by `jupyter execute`
    client = NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": "notebooks"}},
    )
    client.execute()
    nbformat.write(notebook, name)
    print(f"record-examples: {name}: run, outputs saved")
EOF
}

[ -x "$PYTHON" ] || die "$PYTHON is missing: run scripts/setup.sh first"
case "${1:-}" in
    --notebooks-only)
        run_notebooks
        exit 0
        ;;
    "") ;;
    *) die "unknown argument $1 (the only one is --notebooks-only)" ;;
esac

[ "$(id -u)" = 0 ] || die "run as root: tracing enters namespaces and opens raw sockets"
command -v iptables-save >/dev/null || die "iptables-save is missing: run scripts/setup.sh first"

# The lab's names and addresses come from flowtrace/lab/base.py, never from here.
read -r OUTSIDE WEB_TARGET < <("$PYTHON" -c '
from flowtrace import lab
print(f"netns:{lab.OUTSIDE_NETNS}", f"{lab.UPLINK_IP}:{lab.WEB_PORT}")
')

"$FLOWTRACE" lab up >/dev/null
say "lab is up"
mkdir -p "$OUT"

# record NAME FLOWTRACE-ARGS...: one trace into captures/examples/NAME (replaced).
record() {
    local name="$1"
    shift
    rm -rf "${OUT:?}/$name"
    if ! "$FLOWTRACE" "$@" -o "$OUT/$name" >/dev/null; then
        die "flowtrace $* failed or lost a probe: not keeping $name (run it by hand to see why)"
    fi
}

keep_nat_rules() {
    iptables-save -t nat >"$OUT/$1/nat-rules.txt"
}

record ping-c1-c2 ping c1 c2 -c 20 -i 0.05
record snat-c1-outside ping c1 "$OUTSIDE" -c 10 -i 0.05
keep_nat_rules snat-c1-outside
record dnat-outside-web tcp "$OUTSIDE" "$WEB_TARGET" -c 5 -i 0.05
keep_nat_rules dnat-outside-web

for set_dir in "$OUT"/*/; do
    say "$(basename "$set_dir"): $(($(cat "$set_dir"* | wc -c) / 1024)) KB"
done
run_notebooks
say "done: read the notebooks' text again, the numbers in it come from these sets"
