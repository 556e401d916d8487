#!/usr/bin/env bash
# Times `lexico-chat eval speed` for several source trees back to back, alternating, so that machine drift
# weighs on every tree alike. Each tree runs with its own code (PYTHONPATH=TREE) under this checkout's .venv.
#
#   git worktree add --detach /tmp/ab-old <commit>
#   benchmarks/speed_ab.sh [-r ROUNDS] TREE... [-- EVAL-SPEED-ARGS...]
#
# Default eval speed arguments: --context 4096 --decode-tokens 128 --json. One JSON line per run on stdout,
# {"tree": ..., "round": ..., <eval speed result>}. Run it on an otherwise idle machine.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
python="$here/.venv/bin/python"
rounds=2
trees=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -r) rounds="$2"; shift 2 ;;
    --) shift; break ;;
    *) trees+=("$(cd "$1" && pwd)"); shift ;;
  esac
done
args=("$@")
[[ ${#args[@]} -gt 0 ]] || args=(--context 4096 --decode-tokens 128 --json)
[[ ${#trees[@]} -gt 0 ]] || { echo "usage: $0 [-r ROUNDS] TREE... [-- EVAL-SPEED-ARGS...]" >&2; exit 2; }
code='import json, sys; from lexico_chat.cli import main; sys.exit(main(["eval", "speed", *json.loads(sys.argv[1])]))'
argv="$("$python" -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "${args[@]}")"
for round in $(seq 1 "$rounds"); do
  for tree in "${trees[@]}"; do
    result="$(cd "$tree" && PYTHONPATH="$tree" "$python" -c "$code" "$argv")"
    echo "{\"tree\": \"$tree\", \"round\": $round, ${result#\{}"
  done
done
