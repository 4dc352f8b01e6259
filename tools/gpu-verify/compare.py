#!/usr/bin/env python3
"""compare.py A B [--bitwise] [--tol T] [--want-backend NAME]: compares the
'out' tensors of two mrad answer bodies (msgpack or JSON); prints one line,
exit 0 when they agree.  No third-party modules needed.  Run by
tools/gpu-verify.sh."""
import array, json, math, struct, sys

def mp_decode(b):
    pos = 0
    def rd(n):
        nonlocal pos
        v = b[pos:pos + n]; pos += n
        return v
    def obj():
        nonlocal pos
        t = b[pos]; pos += 1
        if t <= 0x7f: return t
        if t >= 0xe0: return t - 0x100
        if 0x80 <= t <= 0x8f: return {obj(): obj() for _ in range(t & 0x0f)}
        if 0x90 <= t <= 0x9f: return [obj() for _ in range(t & 0x0f)]
        if 0xa0 <= t <= 0xbf: return rd(t & 0x1f).decode()
        if t == 0xc0: return None
        if t == 0xc2: return False
        if t == 0xc3: return True
        if t in (0xc4, 0xc5, 0xc6):
            n = struct.unpack('>' + {0xc4: 'B', 0xc5: 'H', 0xc6: 'I'}[t], rd({0xc4: 1, 0xc5: 2, 0xc6: 4}[t]))[0]
            return bytes(rd(n))
        if t == 0xca: return struct.unpack('>f', rd(4))[0]
        if t == 0xcb: return struct.unpack('>d', rd(8))[0]
        if 0xcc <= t <= 0xcf:
            n = 1 << (t - 0xcc); return int.from_bytes(rd(n), 'big')
        if 0xd0 <= t <= 0xd3:
            n = 1 << (t - 0xd0); return int.from_bytes(rd(n), 'big', signed=True)
        if t in (0xd9, 0xda, 0xdb):
            n = int.from_bytes(rd({0xd9: 1, 0xda: 2, 0xdb: 4}[t]), 'big'); return rd(n).decode()
        if t in (0xdc, 0xdd):
            n = int.from_bytes(rd(2 if t == 0xdc else 4), 'big'); return [obj() for _ in range(n)]
        if t in (0xde, 0xdf):
            n = int.from_bytes(rd(2 if t == 0xde else 4), 'big'); return {obj(): obj() for _ in range(n)}
        raise ValueError('msgpack type 0x%02x not handled' % t)
    return obj()

def load(path):
    raw = open(path, 'rb').read()
    body = json.loads(raw) if raw.lstrip()[:1] == b'{' else mp_decode(raw)
    out = body['out']
    dt, data = out['dtype'], out['data']
    if isinstance(data, list):
        vals = [float('nan') if x is None else float(x) for x in data]
    elif dt == 'f32':
        a = array.array('f'); a.frombytes(data); vals = a
        if sys.byteorder != 'little': a.byteswap()
    elif dt == 'f16':
        vals = [x[0] for x in struct.iter_unpack('<e', data)]
    elif dt == 'bf16':
        u = array.array('H'); u.frombytes(data)
        w = array.array('I', (x << 16 for x in u))
        vals = array.array('f'); vals.frombytes(w.tobytes())
    else:
        raise ValueError('dtype ' + dt)
    return body, dt, out['shape'], data, vals

def main():
    a, b = sys.argv[1], sys.argv[2]
    bitwise = '--bitwise' in sys.argv
    tol = float(sys.argv[sys.argv.index('--tol') + 1]) if '--tol' in sys.argv else None
    want = sys.argv[sys.argv.index('--want-backend') + 1] if '--want-backend' in sys.argv else None
    ba, dta, sa, ra, va = load(a)
    bb, dtb, sb, rb, vb = load(b)
    if sa != sb or dta != dtb:
        print('FAIL shape/dtype %s %s vs %s %s' % (sa, dta, sb, dtb)); return 1
    backend = (ba.get('stats') or {}).get('backend')
    num = den = mx = 0.0
    nfa = nfb = 0
    for x, y in zip(va, vb):
        fx, fy = math.isfinite(x), math.isfinite(y)
        nfa += not fx; nfb += not fy
        if fx and fy:
            d = x - y; num += d * d; den += y * y; mx = max(mx, abs(d))
    rel = math.sqrt(num / den) if den > 0 else math.sqrt(num)
    if tol is None:
        tol = 1e-4 if dta == 'f32' else 1e-2
    same = ra == rb
    ok = (same if bitwise else rel < tol) and nfa == nfb and (want is None or backend == want)
    stats = ba.get('stats') or {}
    print('%s %s shape=%s dtype=%s rel=%.2e maxabs=%.2e nonfinite=%d/%d bitwise=%s backend=%s compute_us=%s batch_requests=%s' % (
        'PASS' if ok else 'FAIL', a.split('/')[-1], sa, dta, rel, mx, nfa, nfb,
        'yes' if same else 'no', backend, stats.get('compute_us'), stats.get('batch_requests')))
    return 0 if ok else 1

if __name__ == '__main__':
    sys.exit(main())
