#!/usr/bin/env python3
"""check-image-chroot.py - builds the CPU variant of the Dockerfile without
a container engine, in chroots on a Debian host, and smoke-tests the result
the way the image would run.

Where no Docker engine runs (CI machines, sandboxes), this still executes the
Dockerfile's own instructions: each stage's RUN lines run in a chroot made
from a Debian bookworm minbase root file system (the same distribution as the
debian:bookworm-slim base), COPY copies the build context (less
.dockerignore) or files of an earlier stage, ARG/ENV/WORKDIR/USER are kept
as the builder would.  The final root file system is then run as the image
runs: the ENTRYPOINT as the image's USER with the image's ENV, the
HEALTHCHECK command, one attention request, and SIGTERM, after which mrad
must exit 0.  Only Debian bookworm bases can be emulated, so only
VARIANT=cpu; the CUDA variant needs a real build.

Needs root (chroot, mounts) and Debian's package mirror.  Make the base once:
  mmdebstrap --mode=root --variant=minbase bookworm /tmp/bookworm.tar
then:
  tools/check-image-chroot.py --rootfs-tar /tmp/bookworm.tar [--context DIR] Dockerfile

Prints what it does and exits 0 when the image built and behaved.
"""
import argparse
import fnmatch
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("lint_dockerfile",
                                               os.path.join(HERE, "lint-dockerfile.py"))
lint = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lint)

EMULATED_BASES = {"debian:bookworm-slim", "debian:bookworm", "debian:12-slim", "debian:12"}


def say(msg):
    print(f"check-image: {msg}", flush=True)


class Builder:
    def __init__(self, dockerfile, context, rootfs_tar, workdir, build_args):
        with open(dockerfile, encoding="utf-8") as f:
            self.stages, self.global_args = lint.stages_of(lint.parse(f.read()), build_args)
        self.build_args = build_args
        self.context = context
        self.rootfs_tar = rootfs_tar
        self.workdir = workdir
        self.built = {}       # stage name or index -> rootfs path
        self.image = None     # config of the last stage built

    def stage(self, ref):
        for i, s in enumerate(self.stages):
            if s.name == ref or str(i) == str(ref):
                return i, s
        return None, None

    def build(self, index):
        """Builds stage `index` (and what it needs); returns (rootfs, config)."""
        if index in self.built:
            return self.built[index]
        st = self.stages[index]
        base_index, _ = self.stage(st.base)
        root = os.path.join(self.workdir, f"stage{index}")
        if base_index is not None:
            base_root, base_cfg = self.build(base_index)
            say(f"stage {st.name or index}: from stage {st.base}")
            subprocess.run(["cp", "-a", base_root, root], check=True)
            cfg = json.loads(json.dumps(base_cfg))
        elif st.base in EMULATED_BASES:
            say(f"stage {st.name or index}: from {st.base} (bookworm minbase)")
            os.makedirs(root)
            subprocess.run(["tar", "-xf", self.rootfs_tar, "-C", root], check=True)
            cfg = {"env": {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
                   "workdir": "/", "user": "0", "entrypoint": None, "healthcheck": None,
                   "expose": [], "stopsignal": None}
        else:
            raise SystemExit(f"check-image: cannot emulate base image {st.base!r}; "
                             "only Debian bookworm (use --build-arg VARIANT=cpu)")
        args = {}
        for ins in st.instrs:
            self.apply(root, cfg, args, ins)
        self.built[index] = (root, cfg)
        return root, cfg

    def apply(self, root, cfg, args, ins):
        env_all = dict(self.global_args)
        env_all.update(args)
        env_all.update(cfg["env"])
        kw = ins.keyword
        if kw == "ARG":
            for k, v in lint.parse_kv(ins.args).items():
                args[k] = self.build_args.get(k, v if v is not None else self.global_args.get(k, ""))
        elif kw == "ENV":
            for k, v in lint.parse_kv(lint.substitute(ins.args, env_all)).items():
                cfg["env"][k] = v
        elif kw == "WORKDIR":
            cfg["workdir"] = os.path.join(cfg["workdir"], lint.substitute(ins.args, env_all))
            os.makedirs(root + cfg["workdir"], exist_ok=True)
        elif kw == "COPY":
            self.copy(root, cfg, ins)
        elif kw == "RUN":
            say(f"  RUN (line {ins.line}) {ins.args[:70]}...")
            run_env = dict(args)
            run_env.update(cfg["env"])
            with Chroot(root):
                proc = subprocess.run(["chroot", root, "/bin/sh", "-c",
                                       f"cd {cfg['workdir']} && {ins.args}"],
                                      env=run_env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, check=False)
            if proc.returncode != 0:
                print(proc.stdout[-4000:])
                raise SystemExit(f"check-image: RUN at line {ins.line} failed ({proc.returncode})")
        elif kw == "USER":
            cfg["user"] = ins.args
        elif kw == "ENTRYPOINT":
            cfg["entrypoint"] = json.loads(ins.args)
        elif kw == "HEALTHCHECK":
            cmd = ins.args[ins.args.index("CMD") + 3:].strip()
            cfg["healthcheck"] = json.loads(cmd) if cmd.startswith("[") else ["/bin/sh", "-c", cmd]
        elif kw == "EXPOSE":
            cfg["expose"] += ins.args.split()
        elif kw == "STOPSIGNAL":
            cfg["stopsignal"] = ins.args

    def ignored(self, rel):
        if not hasattr(self, "_ignore"):
            self._ignore = []
            path = os.path.join(self.context, ".dockerignore")
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    self._ignore = [l.strip() for l in f if l.strip() and not l.startswith("#")]
        for pat in self._ignore:
            if fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(rel, pat + "/*") or \
               (pat.startswith("**/") and fnmatch.fnmatch(os.path.basename(rel), pat[3:])):
                return True
        return False

    def copy(self, root, cfg, ins):
        words = ins.args.split()
        src_stage = None
        if words[0].startswith("--from="):
            src_stage = words.pop(0)[len("--from="):]
        *srcs, dst = words
        dst = dst if dst.startswith("/") else os.path.join(cfg["workdir"], dst)
        if src_stage is not None:
            index, _ = self.stage(src_stage)
            src_root, _ = self.build(index)
            for src in srcs:
                target = root + dst
                os.makedirs(target, exist_ok=True)
                subprocess.run(["cp", "-a", src_root + src.rstrip("/") + "/.", target]
                               if src.endswith("/") else ["cp", "-a", src_root + src, target],
                               check=True)
            return
        assert srcs == ["."], f"only `COPY . <dir>` from the context is emulated: {ins.args}"
        for dirpath, dirnames, filenames in os.walk(self.context):
            rel_dir = os.path.relpath(dirpath, self.context)
            rel_dir = "" if rel_dir == "." else rel_dir
            dirnames[:] = [d for d in dirnames if not self.ignored(os.path.join(rel_dir, d))]
            os.makedirs(os.path.join(root + dst, rel_dir), exist_ok=True)
            for name in filenames:
                rel = os.path.join(rel_dir, name)
                if not self.ignored(rel):
                    shutil.copy2(os.path.join(dirpath, name), os.path.join(root + dst, rel),
                                 follow_symlinks=False)


class Chroot:
    """Mounts /proc, /dev and the host's resolver into a root for RUN."""

    def __init__(self, root):
        self.root = root
        self.mounted = []

    def __enter__(self):
        for kind, src, dst in (("proc", "proc", "/proc"), ("bind", "/dev", "/dev")):
            target = self.root + dst
            os.makedirs(target, exist_ok=True)
            opts = ["-t", "proc", src] if kind == "proc" else ["--bind", src]
            subprocess.run(["mount", *opts, target], check=True)
            self.mounted.append(target)
        resolv = self.root + "/etc/resolv.conf"
        if os.path.exists("/etc/resolv.conf"):
            if os.path.islink(resolv) or os.path.exists(resolv):
                os.remove(resolv)
            shutil.copy("/etc/resolv.conf", resolv)
        return self

    def __exit__(self, *exc):
        for target in reversed(self.mounted):
            subprocess.run(["umount", "-l", target], check=False)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smoke_test(root, cfg):
    """Runs the image's entrypoint as its user and checks health, one
    request and a clean drain on SIGTERM."""
    port = free_port()
    env = dict(cfg["env"])
    # The image listens on 0.0.0.0; here it shares the host's network, so
    # keep it on loopback.
    env.update({"MRAD_HOST": "127.0.0.1", "MRAD_PORT": str(port), "MRAD_THREADS": "2"})
    user = cfg["user"]
    uid, _, gid = user.partition(":")
    say(f"run: {' '.join(cfg['entrypoint'])} as {user} on 127.0.0.1:{port}")
    with Chroot(root):
        ldd = subprocess.run(["chroot", root, "ldd", "/usr/local/bin/mrad"],
                             capture_output=True, text=True, check=True).stdout
        assert "not found" not in ldd, ldd
        proc = subprocess.Popen(["chroot", f"--userspec={uid}:{gid or uid}", root,
                                 *cfg["entrypoint"]], env=env, cwd="/",
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 30
            health = None
            while time.monotonic() < deadline and proc.poll() is None:
                health = subprocess.run(["chroot", f"--userspec={uid}:{gid or uid}", root,
                                         *cfg["healthcheck"]], env=env, capture_output=True,
                                        text=True, check=False)
                if health.returncode == 0:
                    break
                time.sleep(0.5)
            assert health is not None and health.returncode == 0, \
                f"HEALTHCHECK failed: {health and health.stderr}"
            say("HEALTHCHECK passes")
            body = json.dumps({"q": {"dtype": "f32", "shape": [1, 1, 64, 8],
                                     "data": [0.01 * (i % 7) for i in range(512)]},
                               "k": {"dtype": "f32", "shape": [1, 1, 64, 8],
                                     "data": [0.02 * (i % 5) for i in range(512)]},
                               "v": {"dtype": "f32", "shape": [1, 1, 64, 8],
                                     "data": [0.03 * (i % 3) for i in range(512)]}}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/attention", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as r:
                answer = json.load(r)
            assert answer["out"]["shape"] == [1, 1, 64, 8], answer
            say(f"POST /v1/attention: 200, backend {answer['stats']['backend']}")
            # chroot execs the entrypoint: proc is tini, mrad its child.
            ps = subprocess.run(["ps", "-o", "uid=,comm=", "-p", str(proc.pid),
                                 "--ppid", str(proc.pid)],
                                capture_output=True, text=True, check=False).stdout.split()
            say(f"processes (uid, command): {' '.join(ps)}")
            assert sorted(ps[1::2]) == ["mrad", "tini"] and set(ps[::2]) == {uid}, ps
            # docker stop: STOPSIGNAL to PID 1 (tini), which forwards it.
            os.kill(proc.pid, getattr(signal, cfg["stopsignal"] or "SIGTERM"))
            rc = proc.wait(timeout=40)
            out = proc.stdout.read()
            assert rc == 0, f"exit {rc} after SIGTERM:\n{out[-2000:]}"
            say("SIGTERM: drained and exited 0")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dockerfile")
    ap.add_argument("--rootfs-tar", required=True, help="Debian bookworm minbase tarball")
    ap.add_argument("--context", help="build context (default: the Dockerfile's folder)")
    ap.add_argument("--build-arg", action="append", default=["VARIANT=cpu"], metavar="K=V")
    ap.add_argument("--keep", action="store_true", help="keep the root file systems")
    opts = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("check-image: needs root (chroot, mount)")
    build_args = dict(a.partition("=")[::2] for a in opts.build_arg)
    context = os.path.abspath(opts.context or os.path.dirname(os.path.abspath(opts.dockerfile)))
    workdir = tempfile.mkdtemp(prefix="check-image-")
    try:
        b = Builder(opts.dockerfile, context, opts.rootfs_tar, workdir, build_args)
        t0 = time.monotonic()
        root, cfg = b.build(len(b.stages) - 1)
        say(f"built in {time.monotonic() - t0:.0f} s; "
            f"final root file system {subprocess.run(['du', '-sh', root], capture_output=True, text=True).stdout.split()[0]}")
        smoke_test(root, cfg)
        say("ok")
        return 0
    finally:
        if opts.keep:
            say(f"kept {workdir}")
        else:
            subprocess.run(["rm", "-rf", "--one-file-system", workdir], check=False)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
