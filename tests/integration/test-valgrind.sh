#!/usr/bin/env bash
# test-valgrind.sh - a short run of the daemon under valgrind memcheck: it
# starts bin/mrad (the plain build; $MRAD_BIN_DIR when set and not
# sanitized, since valgrind and AddressSanitizer do not mix), sends good
# and bad requests (msgpack, JSON, wrong type, truncated, too big, unknown
# path, a client that leaves mid-body), then SIGTERM, and checks that mrad
# exits 0 with no invalid access and no leak ("definitely" or "indirectly"
# lost) in valgrind's log.  tests/integration/valgrind.supp holds the only
# suppression: a known false report inside the dynamic loader.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -n "${SANITIZE:-}" ]; then
    bin=bin/mrad # the sanitized binary cannot run under valgrind
else
    bin=${MRAD_BIN_DIR:-$PWD/bin}/mrad
fi
command -v valgrind >/dev/null || { echo "valgrind missing (tools/deps.sh installs it)"; exit 1; }
[ -x "$bin" ] || { echo "no $bin"; exit 1; }

dir=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$dir"' EXIT
# --backend cpu: the CUDA driver's allocations are not ours to check.
valgrind --tool=memcheck --suppressions=tests/integration/valgrind.supp --leak-check=full --errors-for-leak-kinds=definite,indirect \
    --show-leak-kinds=definite,indirect --error-exitcode=99 --log-file="$dir/vg.log" \
    "$bin" --host 127.0.0.1 --port 0 --backend cpu --threads 2 --http-threads 2 \
    --max-body-bytes 1000000 2>"$dir/mrad.log" &
pid=$!
port=
for _ in $(seq 600); do
    port=$(sed -n 's/.*listening on .*:\([0-9]*\) .*/\1/p' "$dir/mrad.log" | head -1)
    [ -n "$port" ] && break
    sleep 0.1
done
[ -n "$port" ] || { echo "mrad did not start under valgrind"; cat "$dir/mrad.log"; exit 1; }

.venv/bin/python - "$port" <<'PY'
import json, socket, sys
import numpy as np
sys.path.insert(0, "tests/integration")
from mrad_server import MradServer, encode_msgpack, encode_json
srv = MradServer()
srv.port = int(sys.argv[1])
rng = np.random.default_rng(1)
q = rng.standard_normal((1, 2, 70, 16)).astype(np.float32)
for method in ("mra2", "mra2_sparse", "exact"):
    out, _ = srv.attention(q, q, q, method=method, id="vg")
    assert out.shape == q.shape
out, _ = srv.attention(q, q, q, fmt="json")
good = encode_msgpack(q, q, q)
cases = [(good[: len(good) // 2], "application/msgpack", 400),
         (good, "text/plain", 415),
         (b"\x81\xa1q\xc0", "application/msgpack", 400),
         (b'{"q": [1, 2', "application/json", 400)]
for body, ct, want in cases:
    st = srv.post(body, ct)[0]
    assert st == want, (st, want)
# Over the body limit: refused from the headers, before the body is sent.
s = socket.create_connection(("127.0.0.1", srv.port))
s.sendall(b"POST /v1/attention HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\n"
          b"Content-Length: 1000001\r\n\r\n")
assert s.recv(100).startswith(b"HTTP/1.1 413"), "413 expected"
s.close()
assert srv.get("/nope")[0] == 404
assert srv.get("/metrics")[0] == 200 and srv.get("/v1/info")[0] == 200
s = socket.create_connection(("127.0.0.1", srv.port))
s.sendall(b"POST /v1/attention HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\n"
          b"Content-Length: %d\r\n\r\n" % len(good) + good[:500])
s.close()
assert srv.get("/healthz")[0] == 200
print("requests ok")
PY

kill -TERM $pid
rc=0
wait $pid || rc=$?
if [ "$rc" -ne 0 ]; then
    echo "mrad under valgrind exited $rc"; cat "$dir/vg.log"; tail -5 "$dir/mrad.log"; exit 1
fi
grep -q "ERROR SUMMARY: 0 errors" "$dir/vg.log" || { cat "$dir/vg.log"; exit 1; }
grep -q "stopped" "$dir/mrad.log" || { echo "no 'stopped' in the log"; exit 1; }
grep -E "ERROR SUMMARY|definitely lost|indirectly lost|All heap blocks" "$dir/vg.log"
echo "valgrind: clean"
