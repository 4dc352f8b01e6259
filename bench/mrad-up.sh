# mrad-up.sh - sourced by the bench steps that time mrad over loopback:
# mrad_up ARGS... starts "$BIN/mrad" on a free port with those extra
# arguments, sets $port and $mrad_pid, and stops it when the step exits.
mrad_log=$(mktemp)
mrad_pid=
mrad_down() {
    [ -n "$mrad_pid" ] && { kill -TERM "$mrad_pid" 2>/dev/null || true; wait "$mrad_pid" 2>/dev/null || true; }
    rm -f "$mrad_log"
}
trap mrad_down EXIT
mrad_up() {
    "$BIN/mrad" --host 127.0.0.1 --port 0 --backend cpu "$@" 2>"$mrad_log" &
    mrad_pid=$!
    # --port 0: the bound port is in the startup line.
    port=
    for _ in $(seq 200); do
        port=$(sed -n 's/.*listening on [^ ]*:\([0-9][0-9]*\) .*/\1/p' "$mrad_log" | head -n 1)
        [ -n "$port" ] && return 0
        sleep 0.05
    done
    echo "mrad did not start"; cat "$mrad_log"; exit 1
}
