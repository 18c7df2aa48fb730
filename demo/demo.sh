#!/usr/bin/env bash
# The whole job on a fresh machine, against the local Workers AI stand-in:
# a sample folder (with duplicates and a broken file), a run that hits a small budget (exit 75),
# the rerun that finishes (exit 0), and `status` after each. Run by `make demo`.
set -uo pipefail
cd "$(dirname "$0")/.."
CFC=".venv/bin/cfclassify"
PY=".venv/bin/python"
WORK="demo/work"
rm -rf "$WORK" && mkdir -p "$WORK"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "making a sample folder: 60 photos, 20 byte-identical copies, a broken JPEG, a hidden folder"
"$PY" -c "from pathlib import Path; from cfclassify.samples import make_sample_tree; print(make_sample_tree(Path('$WORK/photos'), unique=60, duplicates=20))"

say "starting the stand-in (cfclassify emulate) on a free loopback port"
"$CFC" emulate --port 0 --latency-ms 30 --jitter-ms 20 2>"$WORK/emulator.log" &
EMU_PID=$!
trap 'kill $EMU_PID 2>/dev/null; wait $EMU_PID 2>/dev/null' EXIT
for _ in $(seq 50); do
  URL=$(grep -o 'http://127.0.0.1:[0-9]*' "$WORK/emulator.log" | head -1)
  [ -n "$URL" ] && break
  sleep 0.1
done
[ -n "${URL:-}" ] || { echo "the stand-in did not start:"; cat "$WORK/emulator.log"; exit 1; }
echo "stand-in at $URL"

export CLOUDFLARE_BASE_URL="$URL/client/v4" CLOUDFLARE_ACCOUNT_ID="demo-account" CLOUDFLARE_API_TOKEN="demo-token"
export CFCLASSIFY_DB="$WORK/cfclassify.db"
unset CFCLASSIFY_CONFIG

say "cfclassify run --dry-run: what would be sent and what it would cost"
"$CFC" run --dry-run "$WORK/photos"

say "cfclassify run --budget 5: five neurons pay for 21 images, then the run stops"
"$CFC" run --budget 5 "$WORK/photos"
code=$?
echo "exit code: $code (75 = stopped early, safe to rerun)"

say "cfclassify status"
"$CFC" status

say "cfclassify run again, with the default budget: it goes on where it stopped"
"$CFC" run "$WORK/photos"
code2=$?
echo "exit code: $code2 (0 = nothing left to classify)"

say "cfclassify status"
"$CFC" status

say "cfclassify labels --top 5, and a search for the most common one"
"$CFC" labels --top 5
TOP=$("$CFC" labels --top 1 --json | "$PY" -c "import json,sys; d=json.load(sys.stdin); print(d[0]['label'] if isinstance(d, list) else d['labels'][0]['label'])")
"$CFC" search "$TOP" | head -5

say "what the stand-in billed (each distinct image exactly once)"
curl -s "$URL/__emulator/stats" | "$PY" -c "import json,sys; s=json.load(sys.stdin); print({k: s[k] for k in ('requests','billed_images','distinct_billed','paid_twice','neurons')})"

[ "$code" = 75 ] && [ "$code2" = 0 ] || { echo "demo: unexpected exit codes $code / $code2"; exit 1; }
say "demo done; the database is $WORK/cfclassify.db (try: cfclassify --db $WORK/cfclassify.db labels)"
