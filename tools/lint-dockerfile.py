#!/usr/bin/env python3
"""lint-dockerfile.py - checks a Dockerfile against the rules this project
holds its images to, and runs hadolint on it when hadolint is installed.

The rules are about what the image does at run time, so they are checked on
the stage that a build actually produces: the last stage, followed through
the stages it is built FROM (with ARG defaults, or values given with
--build-arg, substituted), so that a setting inherited from a parent stage
counts.

  R1  every FROM names an image by tag or digest, never implicitly or
      explicitly `latest`
  R2  the image runs as a non-root user, given by number so that
      Kubernetes' runAsNonRoot can verify it
  R3  a HEALTHCHECK is defined (not NONE)
  R4  ENTRYPOINT is in exec form (a JSON array), so that signals reach the
      process instead of a shell
  R5  no ADD of a URL (downloads are not reproducible); ADD only for local
      archives, COPY otherwise
  R6  every RUN that calls apt-get install passes --no-install-recommends
      and removes /var/lib/apt/lists in the same layer
  R7  STOPSIGNAL, when set, is SIGTERM or SIGINT (the signals that drain)
  R8  with --expect-port P: EXPOSE P
  R9  with --expect-env K=V: ENV K=V in the final image

Usage: lint-dockerfile.py [--build-arg K=V]... [--expect-port P]
                          [--expect-env K=V]... [--hadolint PATH|none] FILE
Prints one line per problem (FILE:LINE: RULE message) and exits 1 when
there is any, 0 otherwise.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys


class Instr:
    """One Dockerfile instruction: its line, keyword and argument text."""

    def __init__(self, line, keyword, args):
        self.line = line
        self.keyword = keyword
        self.args = args


def parse(text):
    """Splits a Dockerfile into instructions, joining continued lines and
    dropping comments (a line whose first non-blank is #)."""
    instrs, buf, start = [], [], None
    for lineno, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment inside a continued instruction
        if start is None:
            start = lineno
        if stripped.endswith("\\"):
            buf.append(stripped[:-1])
            continue
        buf.append(stripped)
        joined = " ".join(part.strip() for part in buf if part.strip())
        keyword, _, args = joined.partition(" ")
        instrs.append(Instr(start, keyword.upper(), args.strip()))
        buf, start = [], None
    if buf:
        joined = " ".join(buf)
        keyword, _, args = joined.partition(" ")
        instrs.append(Instr(start, keyword.upper(), args.strip()))
    return instrs


def substitute(text, values):
    """Expands $NAME, ${NAME} and ${NAME:-default} from `values`."""

    def repl(m):
        name = m.group(1) or m.group(3)
        default = m.group(2)
        if name in values and values[name] != "":
            return values[name]
        return default if default is not None else ""

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)",
                  repl, text)


def parse_kv(args):
    """Parses `K=V K2="V 2"` (or the legacy `K V`) of ENV, ARG and LABEL."""
    out = {}
    if "=" not in args.split(" ", 1)[0]:
        key, _, value = args.partition(" ")
        out[key] = value.strip().strip('"')
        return out
    for m in re.finditer(r'([A-Za-z_][A-Za-z0-9_.-]*)(?:=("(?:[^"\\]|\\.)*"|\S*))?', args):
        value = m.group(2)
        if value is None:
            out[m.group(1)] = None
        else:
            out[m.group(1)] = value[1:-1] if value.startswith('"') else value
    return out


class Stage:
    def __init__(self, instr, base, name):
        self.from_instr = instr
        self.base = base
        self.name = name
        self.instrs = []


def stages_of(instrs, build_args):
    """Groups instructions by stage and resolves FROM lines with the global
    ARG defaults (before the first FROM) overridden by `build_args`."""
    global_args, stages = {}, []
    for ins in instrs:
        if ins.keyword == "ARG" and not stages:
            for k, v in parse_kv(ins.args).items():
                global_args[k] = build_args.get(k, v if v is not None else "")
            continue
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            base = substitute(words[0], global_args)
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(ins, base, name))
            continue
        if stages:
            stages[-1].instrs.append(ins)
    return stages, global_args


def check(path, build_args, expect_port=None, expect_env=()):
    """Returns the problems of the Dockerfile at `path`, as strings."""
    with open(path, encoding="utf-8") as f:
        instrs = parse(f.read())
    problems = []

    def bad(ins, rule, msg):
        problems.append(f"{path}:{ins.line if ins else 0}: {rule} {msg}")

    stages, _ = stages_of(instrs, build_args)
    if not stages:
        bad(None, "R1", "no FROM instruction")
        return problems
    names = {s.name: s for s in stages if s.name}

    # R1: pinned base images (stage references are not images).
    for s in stages:
        if s.base in names or s.base == "scratch":
            continue
        ref = s.base.split("@", 1)
        image = ref[0]
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else None
        if len(ref) == 1 and (tag is None or tag == "" or tag == "latest"):
            bad(s.from_instr, "R1", f"base image {s.base!r} is not pinned to a tag or digest")

    # The chain of stages the final image is made of, parents first.
    chain, s, seen = [], stages[-1], set()
    while s is not None and id(s) not in seen:
        seen.add(id(s))
        chain.insert(0, s)
        s = names.get(s.base)
    effective = [ins for st in chain for ins in st.instrs]

    # R2: the last USER of the final image is not root.
    users = [ins for ins in effective if ins.keyword == "USER"]
    if not users:
        bad(stages[-1].from_instr, "R2", "no USER: the image would run as root")
    else:
        user = users[-1].args.split(":", 1)[0]
        if user in ("root", "0"):
            bad(users[-1], "R2", "the image runs as root")
        elif not user.isdigit():
            bad(users[-1], "R2", f"USER {user!r} is not numeric; runAsNonRoot cannot verify a name")

    # R3: a health check.
    checks = [ins for ins in effective if ins.keyword == "HEALTHCHECK"]
    if not checks or checks[-1].args.upper().startswith("NONE"):
        bad(stages[-1].from_instr, "R3", "no HEALTHCHECK in the final image")

    # R4: exec-form ENTRYPOINT.
    entry = [ins for ins in effective if ins.keyword == "ENTRYPOINT"]
    if not entry:
        bad(stages[-1].from_instr, "R4", "no ENTRYPOINT in the final image")
    else:
        try:
            form = json.loads(entry[-1].args)
            ok = isinstance(form, list) and form and all(isinstance(a, str) for a in form)
        except ValueError:
            ok = False
        if not ok:
            bad(entry[-1], "R4", "ENTRYPOINT is in shell form; signals would go to /bin/sh")

    # R5 and R6 apply to every stage.
    for st in stages:
        for ins in st.instrs:
            if ins.keyword == "ADD" and re.search(r"(^|\s)(https?|ftp)://", ins.args):
                bad(ins, "R5", "ADD of a URL; download in a RUN with a checksum instead")
            if ins.keyword == "RUN" and re.search(r"apt-get\s+(-\S+\s+)*install", ins.args):
                if "--no-install-recommends" not in ins.args:
                    bad(ins, "R6", "apt-get install without --no-install-recommends")
                if not re.search(r"rm\s+-[a-z]*r[a-z]*f?\S*\s+/var/lib/apt/lists", ins.args):
                    bad(ins, "R6", "apt-get install without removing /var/lib/apt/lists in the same RUN")

    # R7: the stop signal drains.
    stops = [ins for ins in effective if ins.keyword == "STOPSIGNAL"]
    if stops and stops[-1].args not in ("SIGTERM", "SIGINT", "15", "2"):
        bad(stops[-1], "R7", f"STOPSIGNAL {stops[-1].args} does not drain")

    # R8: the service port.
    if expect_port is not None:
        ports = {p.split("/")[0] for ins in effective if ins.keyword == "EXPOSE"
                 for p in ins.args.split()}
        if str(expect_port) not in ports:
            bad(stages[-1].from_instr, "R8", f"port {expect_port} is not EXPOSEd")

    # R9: environment of the final image.
    env = {}
    for ins in effective:
        if ins.keyword == "ENV":
            env.update(parse_kv(ins.args))
    for want in expect_env:
        key, _, value = want.partition("=")
        if env.get(key) != value:
            bad(stages[-1].from_instr, "R9",
                f"ENV {key} is {env.get(key)!r} in the final image, expected {value!r}")
    return problems


def run_hadolint(path, exe):
    """Runs hadolint; returns its findings as problem lines."""
    proc = subprocess.run([exe, "--no-color", "--format", "tty", path],
                          capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        return []
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return [f"hadolint: {line}" for line in lines] or [f"hadolint: exit {proc.returncode}"]


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dockerfile")
    ap.add_argument("--build-arg", action="append", default=[], metavar="K=V")
    ap.add_argument("--expect-port", type=int)
    ap.add_argument("--expect-env", action="append", default=[], metavar="K=V")
    ap.add_argument("--hadolint", default="auto",
                    help="path of hadolint, 'auto' (PATH, then the project .venv) or 'none'")
    opts = ap.parse_args(argv)

    build_args = dict(a.partition("=")[::2] for a in opts.build_arg)
    problems = check(opts.dockerfile, build_args, opts.expect_port, opts.expect_env)
    exe = opts.hadolint
    if exe == "auto":
        venv = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".venv", "bin", "hadolint")
        exe = shutil.which("hadolint") or (venv if os.access(venv, os.X_OK) else None)
        if exe is None:
            print("lint-dockerfile: hadolint not found; project rules only", file=sys.stderr)
    if exe and exe != "none":
        problems += run_hadolint(opts.dockerfile, exe)
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
