#!/usr/bin/env bash
# The composite action's body (action.yml): the stages of DESIGN §2 for one mode. Every input
# arrives as an environment variable (EMSHAP_CI_*, GITHUB_TOKEN, AWS_*) set by action.yml's
# `env:`, never pasted into this text; the binary reads them itself.
#
#   pr       pull → train both → evaluate → report → comment   (no publish, no promote)
#   main     pull → train both → evaluate → report → publish → promote on pass → dispatch
#   retrain  main, with the workflow_dispatch inputs (window, force + reason)
#
# `emshap-ci run` chains them and writes the step outputs (verdict, sha, manifest_uri,
# comment_url), the job summary, the annotations and a log group per stage. A failed gate
# still publishes the report (and, on main, the version, so the failure can be inspected)
# and then fails the step with exit 1; a bad model never reaches promote.
set -euo pipefail
bin=${EMSHAP_CI_BIN:?EMSHAP_CI_BIN must name the emshap-ci binary}
if [ -n "${EMSHAP_CI_ENV_FILE:-}" ]; then
  # From the install step: where this machine's libtorch and ONNX Runtime are.
  # shellcheck disable=SC1090
  source "$EMSHAP_CI_ENV_FILE"
  export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
mode=${EMSHAP_CI_MODE:-pr}
case "$mode" in
  pr | main | retrain | monitor) ;;
  *) echo "::error title=emshap-ci::mode must be pr, main, retrain or monitor (got '$mode')"; exit 2 ;;
esac
# An input left empty means "not set".
for v in $(compgen -e | grep '^EMSHAP_CI_'); do
  [ -n "${!v}" ] || unset "$v"
done
if [ -n "${EMSHAP_CI_BROKERS:-}" ]; then
  export EMSHAP_CI_SOURCE="kafka:${EMSHAP_CI_KAFKA_TOPIC:-raw_metrics}"
fi
# The kafka-properties input has one KEY=VALUE a line; the binary takes them `;`-separated.
if [ -n "${EMSHAP_CI_KAFKA_PROPERTIES:-}" ]; then
  EMSHAP_CI_KAFKA_PROPERTIES=$(printf '%s' "$EMSHAP_CI_KAFKA_PROPERTIES" | tr '\n' ';')
  export EMSHAP_CI_KAFKA_PROPERTIES
fi
if [ "${EMSHAP_CI_FORCE:-false}" != true ]; then unset EMSHAP_CI_FORCE; fi
if [ "$mode" = pr ]; then
  # A pull request never forces and never moves production.
  unset EMSHAP_CI_FORCE EMSHAP_CI_REASON
elif [ -z "${EMSHAP_CI_STORE:-}" ]; then
  echo "::warning title=emshap-ci::no store configured: the version goes to work/store on this runner only"
fi
# `doctor: true`: check Kafka, the store, GitHub and the native libraries first, and stop
# with its table (exit 3) before anything runs; main and retrain also prove the store is
# writable.
if [ "${EMSHAP_CI_ACTION_DOCTOR:-false}" = true ]; then
  if [ "$mode" = pr ]; then "$bin" doctor; else "$bin" doctor --write; fi
fi
unset EMSHAP_CI_ACTION_DOCTOR
if [ "$mode" = monitor ]; then
  # The window input's default (all) means monitor's own default: after production.
  if [ "${EMSHAP_CI_WINDOW:-all}" = all ]; then unset EMSHAP_CI_WINDOW; fi
  unset EMSHAP_CI_FORCE EMSHAP_CI_REASON
  exec "$bin" monitor
fi
unset EMSHAP_CI_MONITOR_DISPATCH EMSHAP_CI_FAIL_ON
# `run` reads the mode, store, sha, force and reason from EMSHAP_CI_* and GITHUB_*.
exec "$bin" run
