#!/usr/bin/env bash
# Run commands at the same time (e.g. two trainings sharing one GPU) and wait for all of them:
#   bash scripts/side_by_side.sh CMD1 ARGS... -- CMD2 ARGS... [-- ...]
# A SIGINT to this script (gpu_check.sh's deadline) reaches every command, which then stops
# cleanly; the script waits for them. Exit status: 0 if every command succeeded, else 1.
set -u
pids=()
start() {
    # A non-interactive shell starts background commands with SIGINT ignored: give it back.
    (trap - INT; exec "$@") &
    pids+=($!)
}
cmd=()
for arg in "$@"; do
    if [ "$arg" = -- ]; then start "${cmd[@]}"; cmd=(); else cmd+=("$arg"); fi
done
[ ${#cmd[@]} -gt 0 ] && start "${cmd[@]}"
trap : INT  # keep waiting for the commands while they stop
status=0
for pid in "${pids[@]}"; do
    while true; do
        wait "$pid"; rc=$?
        kill -0 "$pid" 2>/dev/null || break  # wait returned early only for the trapped signal
    done
    (( rc != 0 )) && status=1
done
exit $status
