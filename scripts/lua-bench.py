#!/usr/bin/env python3
"""Redis CPU per call of the profiles and accounts merge scripts: a git revision's against the
working tree's, interleaved three times each on a throwaway redis-server (`INFO commandstats`
usec_per_call of EVALSHA, pipelines of 64). Needs redis-server and the `redis` package
(`pip install redis`).

    scripts/lua-bench.py a6572d5
"""
import json, os, re, shutil, subprocess, sys, tempfile, time

import redis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REV = sys.argv[1] if len(sys.argv) > 1 else "HEAD"


def source(path, rev):
    if rev is None:
        return open(os.path.join(ROOT, path)).read()
    return subprocess.run(["git", "-C", ROOT, "show", f"{rev}:{path}"], check=True,
                          capture_output=True, text=True).stdout


def script(path, rev):
    stamps = re.search(r'const LUA_STAMPS: &str = r#"(.*?)"#;',
                       source("services/common/src/lww.rs", rev), re.S).group(1)
    body = re.search(r'lww::Script::new\(\s*r#"(.*?)"#,', source(path, rev), re.S).group(1)
    return stamps + body


def key_count(lua):
    return max(int(n) for n in re.findall(r"KEYS\[(\d+)\]", lua))


def main():
    data = tempfile.mkdtemp()
    port = 16000 + os.getpid() % 10000
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--dir", data], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        r = redis.Redis(port=port)

        def measure(lua, calls, args_of):
            r.flushall()
            r.config_resetstat()
            sha, nkeys = r.script_load(lua), key_count(lua)
            p = r.pipeline(transaction=False)
            for i in range(calls):
                keys, argv = args_of(i)
                keys = (keys + [f"{keys[0]}:extra{j}" for j in range(nkeys)])[:nkeys]
                p.evalsha(sha, nkeys, *keys, *argv)
                if len(p) >= 64:
                    p.execute()
            p.execute()
            return r.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]

        def profile_args(fresh):
            def args(i):
                u = f"u{i}" if fresh else "u0"
                keys = [f"{{ws:a:user:{u}}}:fields", f"{{ws:a:user:{u}}}:profile",
                        f"{{ws:a:user:{u}}}:reset", f"{{ws:a:user:{u}}}:seen:m{i}"]
                argv = ["event", 1700000000000 + i, "%032x" % i, "0", "", 86400, "1", "-", 65536]
                for j in range(10):
                    argv += [f"trait_{j}", json.dumps(f"value {j} of event {i}")]
                return keys, argv
            return args

        def group_args(tenants):
            def args(i):
                t = f"t{i % tenants}"
                tag = f"{{ws:a:tenant:{t}}}"
                keys = [f"{tag}:fields", f"{tag}:doc", f"{tag}:reset", f"{tag}:mreset",
                        f"{tag}:members", f"{tag}:mfields"]
                argv = ["event", 1700000000000 + i, "%032x" % i, "0", json.dumps(t), "0", 65536,
                        "t:name", json.dumps("Team"), "p:plan", json.dumps("pro"), f"m:u{i}", "{}"]
                return keys, argv
            return args

        cases = [
            ("profiles: identify merging 10 traits into one profile", "services/profiles/src/store.rs", 20000, profile_args(False)),
            ("profiles: identify creating a profile of 10 traits", "services/profiles/src/store.rs", 20000, profile_args(True)),
            ("accounts: group creating a tenant", "services/accounts/src/store.rs", 3000, group_args(3000)),
            ("accounts: group joining one of 3 tenants (to 1,000 members each)", "services/accounts/src/store.rs", 3000, group_args(3)),
        ]
        for label, path, calls, args in cases:
            old, new = script(path, REV), script(path, None)
            res = {REV: [], "working tree": []}
            for _ in range(3):
                res[REV].append(measure(old, calls, args))
                res["working tree"].append(measure(new, calls, args))
            print(f"{label}: " + "; ".join(
                f"{k} {sorted(v)[1]:.1f} µs (runs {', '.join(f'{x:.1f}' for x in v)})" for k, v in res.items()))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(data, ignore_errors=True)


main()
