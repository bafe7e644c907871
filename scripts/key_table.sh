#!/usr/bin/env bash
# Which stage cache keys change under one override, from `dry_run=true` (issue #13's table).
#   bash scripts/key_table.sh [experiment]      (default bootstrap; prints a Markdown table)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
EXP=${1:-bootstrap}
TMP=$(mktemp -d)
keys() { $PY -m platform.run experiment="$EXP" dry_run=true paths.results="$TMP" "$@" 2>&1 \
         | awk '/ key=/ {print $1, $2}' | sed 's/key=//'; }
keys > "$TMP/base"
echo "| override | stages whose key changes |"
echo "|---|---|"
for o in sampler.batch_size=128 mstep.num_threads=2 mstep.log_every=50 estep.num_shards=4 estep.num_samples=8 seed=1; do
  keys "$o" > "$TMP/new"
  changed=$(paste -d' ' "$TMP/base" "$TMP/new" | awk '$2 != $4 {printf "%s ", $1}')
  echo "| \`$o\` | ${changed:-none} |"
done
rm -rf "$TMP"
