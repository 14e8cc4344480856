#!/usr/bin/env bash
# An expand/contract database migration, each phase gated by coalmine's verdict.
# The worked example: docs/migrations.md. The profile: deploy/migration/coalmine.toml.
#
#   deploy/migration/migrate.sh [--from PHASE] [--to PHASE]
#
# For each phase (expand, backfill, contract), in order:
#   1. coalmine start --strategy migration --phase PHASE --profile migration: the phase is
#      judged against the service's own metrics of the 30 minutes before it;
#   2. the phase's up-migration, in the background;
#   3. coalmine wait, at the same time: the phase's final verdict.
# promote: on to the next phase (once the up-migration has finished). rollback: the
# up-migration is stopped if it still runs, the phase's down-migration is run (or, when
# the phase has none, its manual action is pointed to), and the script stops.
#
# Exit codes:
#   0  every phase promoted
#   1  a phase was rolled back
#   2  bad usage or configuration
#   3  a phase was inconclusive: the schema is left as the phase made it; decide by hand
#   4  no final verdict in time: the analysis is aborted, the schema left as it is
#   5  a phase could not run: coalmine start or the up-migration failed
#
# Environment (defaults in brackets):
#   COALMINE_CONFIG  coalmine's configuration: the bus and the profile [coalmine.toml here]
#   SERVICE          the service the database exporter's metric events name [orders-db]
#   PROFILE          the analysis profile [migration]
#   PHASES           the phases, in order [expand backfill contract]
#   RUN_ID           makes the deployment ids SERVICE-RUN_ID-PHASE unique per run
#                    [the UTC time]; letters, digits, '.', '_' and '-'
#   WAIT_TIMEOUT     how long coalmine wait waits: the profile's max_duration plus a
#                    margin [50m]
#   VERDICT_DIR      where each phase's final verdict is written, as DEPLOYMENT_ID.json [.]
#   DATABASE_URL     the database, for the default up, down and stop steps (psql)
#   SQL_DIR          PHASE.up.sql and PHASE.down.sql for the default steps [sql here]
#   MIGRATE_UP, MIGRATE_DOWN, MIGRATE_STOP
#                    commands that replace the default steps (your migration tool), run
#                    with sh -c; PHASE and DEPLOYMENT_ID are in their environment
#   POLL_SECONDS     how often the up-migration and the wait are checked [5]
#   STOP_GRACE       seconds a stopped up-migration has to end before it is sent SIGTERM [30]

set -eu

here=$(cd "$(dirname "$0")" && pwd)
COALMINE_CONFIG=${COALMINE_CONFIG:-$here/coalmine.toml}
SERVICE=${SERVICE:-orders-db}
PROFILE=${PROFILE:-migration}
PHASES=${PHASES:-expand backfill contract}
RUN_ID=${RUN_ID:-$(date -u +%Y%m%d-%H%M%S)}
WAIT_TIMEOUT=${WAIT_TIMEOUT:-50m}
VERDICT_DIR=${VERDICT_DIR:-.}
SQL_DIR=${SQL_DIR:-$here/sql}
POLL_SECONDS=${POLL_SECONDS:-5}
STOP_GRACE=${STOP_GRACE:-30}

say() { printf 'migrate: %s\n' "$*" >&2; }
usage() {
  say "$*"
  say "usage: migrate.sh [--from PHASE] [--to PHASE]   (phases: $PHASES)"
  exit 2
}

from=
to=
while [ $# -gt 0 ]; do
  case $1 in
    --from) [ $# -ge 2 ] || usage "--from needs a phase"; from=$2; shift 2 ;;
    --to) [ $# -ge 2 ] || usage "--to needs a phase"; to=$2; shift 2 ;;
    -h | --help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) usage "unknown argument: $1" ;;
  esac
done
case $RUN_ID in
  '' | *[!A-Za-z0-9._-]*) usage "RUN_ID may hold letters, digits, '.', '_' and '-': $RUN_ID" ;;
esac
for name in $from $to; do
  case " $PHASES " in
    *" $name "*) ;;
    *) usage "no phase $name" ;;
  esac
done
if [ -n "$from" ] && [ -n "$to" ]; then
  case " $PHASES " in
    *" $to "*" $from "*) usage "--to $to comes before --from $from" ;;
  esac
fi
if [ -z "${MIGRATE_UP:-}" ] || [ -z "${MIGRATE_DOWN:-}" ] || [ -z "${MIGRATE_STOP:-}" ]; then
  [ -n "${DATABASE_URL:-}" ] || usage "DATABASE_URL is needed by the default (psql) steps"
fi
mkdir -p "$VERDICT_DIR"

phase=
deployment=
step_pid=
wait_pid=

# -- the phase's steps: your commands, or psql with the phase's SQL files ---------------

run_psql() {
  PGAPPNAME=$deployment psql "$DATABASE_URL" -X -q -v ON_ERROR_STOP=1 "$@"
}

psql_up() { run_psql -f "$SQL_DIR/$phase.up.sql"; }

psql_down() {
  if [ -f "$SQL_DIR/$phase.down.sql" ]; then
    run_psql -f "$SQL_DIR/$phase.down.sql"
  else
    say "$phase has no down-migration: nothing was undone; what to do is at the top of" \
      "$SQL_DIR/$phase.up.sql"
  fi
}

# Cancels the up-migration's statement on the server: its session has the deployment id
# as application_name. psql then ends with an error.
psql_stop() {
  printf '%s\n' "SELECT pg_cancel_backend(pid) FROM pg_stat_activity
    WHERE application_name = left(:'app', 63) AND pid <> pg_backend_pid();" |
    run_psql -v app="$deployment" -o /dev/null -f -
}

step() {  # step up|down|stop
  case $1 in
    up) command=${MIGRATE_UP:-} ;;
    down) command=${MIGRATE_DOWN:-} ;;
    *) command=${MIGRATE_STOP:-} ;;
  esac
  if [ -n "$command" ]; then
    PHASE=$phase DEPLOYMENT_ID=$deployment sh -c "$command"
  else
    "psql_$1"
  fi
}

running() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# Stops the up-migration if it still runs: the stop step, then SIGTERM to its process
# group after STOP_GRACE seconds.
stop_up() {
  running "$step_pid" || return 0
  say "$phase: stopping the up-migration"
  step stop || say "$phase: the stop step failed"
  waited=0
  while running "$step_pid" && [ "$waited" -lt "$STOP_GRACE" ]; do
    sleep 1
    waited=$((waited + 1))
  done
  if running "$step_pid"; then
    kill -TERM -- "-$step_pid" 2>/dev/null || true
  fi
  wait "$step_pid" 2>/dev/null || true
  step_pid=
}

abort_analysis() {
  coalmine finish --config "$COALMINE_CONFIG" --deployment "$deployment" --service "$SERVICE" \
    --event aborted || say "$phase: could not abort the analysis of $deployment"
}

show_verdict() {
  [ -s "$1" ] || return 0
  python3 - "$1" <<'PY' || true
import json
import sys

with open(sys.argv[1], encoding="utf-8") as f:
    verdict = json.load(f)
print(f"migrate: {verdict['deployment_id']}: {verdict['decision']}: {verdict['summary']}",
      file=sys.stderr)
reference = verdict.get("checks", {}).get("reference")
if reference:
    print(f"migrate:   compared with {reference['window_start']} .. {reference['window_end']}",
          file=sys.stderr)
PY
}

on_signal() {
  trap - INT TERM
  say "interrupted: stopping ${phase:-nothing}"
  if [ -n "$deployment" ]; then
    stop_up
    if running "$wait_pid"; then
      kill "$wait_pid" 2>/dev/null || true
      abort_analysis
    fi
  fi
  exit 130
}
trap on_signal INT TERM

# -- one phase ---------------------------------------------------------------------------

run_phase() {
  phase=$1
  deployment=$SERVICE-$RUN_ID-$phase
  verdict=$VERDICT_DIR/$deployment.json
  say "$phase: announcing $deployment"
  if ! coalmine start --config "$COALMINE_CONFIG" --deployment "$deployment" \
    --service "$SERVICE" --strategy migration --phase "$phase" --profile "$PROFILE"; then
    say "$phase: coalmine start failed; nothing was changed"
    return 5
  fi

  # The up-migration in its own process group (set -m), so that it can be stopped whole.
  set -m
  step up </dev/null &
  step_pid=$!
  set +m
  coalmine wait --config "$COALMINE_CONFIG" --deployment "$deployment" \
    --timeout "$WAIT_TIMEOUT" --json >"$verdict" &
  wait_pid=$!

  while running "$wait_pid"; do
    if [ -n "$step_pid" ] && ! running "$step_pid"; then
      status=0
      wait "$step_pid" || status=$?
      step_pid=
      if [ "$status" -ne 0 ]; then
        say "$phase: the up-migration failed (exit $status); aborting the analysis"
        kill "$wait_pid" 2>/dev/null || true
        wait "$wait_pid" 2>/dev/null || true
        wait_pid=
        abort_analysis
        return 5
      fi
      say "$phase: the up-migration is done; waiting for the verdict"
    fi
    sleep "$POLL_SECONDS"
  done
  code=0
  wait "$wait_pid" || code=$?
  wait_pid=
  show_verdict "$verdict"

  case $code in
    0)
      if running "$step_pid"; then
        say "$phase: promoted while the up-migration still runs; waiting for it to finish"
      fi
      if [ -n "$step_pid" ]; then
        status=0
        wait "$step_pid" || status=$?
        step_pid=
        if [ "$status" -ne 0 ]; then
          say "$phase: the up-migration failed (exit $status) after the promote"
          return 5
        fi
      fi
      say "$phase: promote"
      return 0
      ;;
    1)
      say "$phase: rollback"
      stop_up
      say "$phase: running the down-migration"
      if ! step down; then
        say "$phase: the down-migration failed: see its output, and docs/migrations.md"
      fi
      return 1
      ;;
    3)
      say "$phase: inconclusive; the schema is left as the phase made it"
      stop_up
      say "$phase: read the verdict ($verdict), then run again --from $phase, or go on" \
        "with --from the next phase, or run the down-migration by hand"
      return 3
      ;;
    *)
      say "$phase: no final verdict (coalmine wait exit $code); aborting the analysis"
      stop_up
      abort_analysis
      [ "$code" -eq 2 ] && return 2
      return 4
      ;;
  esac
}

# -- the phases --------------------------------------------------------------------------

started=
[ -n "$from" ] || started=yes
for p in $PHASES; do
  [ "$p" = "$from" ] && started=yes
  [ -n "$started" ] || continue
  result=0
  run_phase "$p" || result=$?
  if [ "$result" -ne 0 ]; then
    exit "$result"
  fi
  [ "$p" = "$to" ] && break
done
say "done: $SERVICE migrated (run $RUN_ID)"
