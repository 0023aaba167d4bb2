#!/bin/bash
# Slurm epilogue (Epilog= in slurm.conf): save what a job left only on this node's SSD.
#
# For every run under the node-local tier root, drain to the capacity pools the steps whose
# drain was cut short (killed with the job) and its newest committed checkpoint (`tierpoint
# drain`, which skips steps the pools already hold and fails if any drain fails), then remove
# the run's local directory, but only once `tierpoint ls` shows that newest step committed on
# the capacity tier. Anything that fails is logged and the local copy is kept. The script
# always exits 0: a failing epilogue would make Slurm drain the node.
#
# Settings (environment; set them in the Epilog wrapper or /etc/default):
#   TIERPOINT_LOCAL_ROOT   node-local tier root, as the job's Checkpointer(local=...); {node}
#                          in it becomes this node's name as tierpoint sees it (TIERPOINT_NODE,
#                          else the hostname) (default: /tmp/tierpoint/{node})
#   TIERPOINT_PERSISTENT   capacity pools, space-separated (required; nothing is done without)
#   TIERPOINT_BIN          the tierpoint command (default: tierpoint on PATH)
#   TIERPOINT_EPILOG_LOG   log file (default: /var/log/tierpoint-epilog.log)
set -u

node=${TIERPOINT_NODE:-$(hostname)}
local_root=${TIERPOINT_LOCAL_ROOT:-/tmp/tierpoint/\{node\}}
local_root=${local_root//\{node\}/$node}
pools=${TIERPOINT_PERSISTENT:-}
bin=${TIERPOINT_BIN:-tierpoint}
log=${TIERPOINT_EPILOG_LOG:-/var/log/tierpoint-epilog.log}
job=${SLURM_JOB_ID:-?}

say() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname) job $job: $*" >> "$log"; }

if [ -z "$pools" ]; then
    say "TIERPOINT_PERSISTENT is not set; nothing drained"
    exit 0
fi
if [ ! -d "$local_root" ]; then
    say "no local tier at $local_root; nothing to do"
    exit 0
fi
# shellcheck disable=SC2086 # the pools are a space-separated list
if out=$("$bin" drain --local "$local_root" --persistent $pools 2>&1); then
    say "drained: $(echo "$out" | tr '\n' ';')"
else
    say "drain FAILED, local checkpoints kept: $(echo "$out" | tr '\n' ';')"
    exit 0
fi
for run_dir in "$local_root"/*/; do
    run=$(basename "$run_dir")
    # shellcheck disable=SC2086
    listing=$("$bin" ls "$local_root" --run "$run" --persistent $pools --json 2>&1) || {
        say "run $run: cannot list ($listing); kept"; continue; }
    newest_safe=$(printf '%s' "$listing" | "${TIERPOINT_PYTHON:-python3}" -c '
import json, sys
rows = [r for r in json.load(sys.stdin) if r.get("state") == "committed"]
print("yes" if rows and rows[-1].get("capacity") == "committed" else "no")')
    if [ "$newest_safe" = "yes" ]; then
        rm -rf -- "$run_dir" && say "run $run: newest step is on the capacity tier; local copy removed"
    else
        say "run $run: newest step is not on the capacity tier; local copy kept"
    fi
done
exit 0
