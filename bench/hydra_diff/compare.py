#!/usr/bin/env python3
"""Compare the results of harness.py: print a report by category (cases where the two differ,
inputs only one of them rejects, and the ids of the rest), write WORK/summary.json, and check
the outcome of every case against expected.json (the differences known and documented in the
README). Exit 1 if a case now falls in another category than expected.json says."""
import json, os, sys, math
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cases import CASES

ROOT = os.environ["WORK"]

def canon(v):
    """Type-tagged canonical form (so 1 != 1.0 != '1' != True; nan == nan)."""
    if isinstance(v, dict):
        return ("dict", tuple((canon(k), canon(x)) for k, x in v.items()))
    if isinstance(v, list):
        return ("list", tuple(canon(x) for x in v))
    if isinstance(v, float):
        return ("float", "nan" if math.isnan(v) else repr(v))
    return (type(v).__name__, repr(v))

def short(v, n=300):
    s = json.dumps(v, ensure_ascii=False, default=str)
    return s if len(s) <= n else s[:n] + "..."

out = {"both_reject": [], "hydra_only_rejects": [], "orch_only_rejects": [], "same": [], "diff": []}
for c in CASES:
    p = f"{ROOT}/cases/{c['id']}/result.json"
    if not os.path.exists(p):
        continue
    r = json.load(open(p))
    h, o = r["hydra"], r["orch"]
    hok, ook = h["rc"] == 0, o["rc"] == 0
    rec = dict(id=r["id"], ov=r["overrides"], flags=r["flags"])
    if not hok and not ook:
        if o["rc"] != 2: rec["problems"] = [f"orch rc {o['rc']} (expected 2)"]
        out["both_reject"].append(rec); continue
    if not hok:
        rec["hydra_err"] = [l for l in h["err"].splitlines() if l.strip()][-3:]
        rec["orch_jobs"] = [j["overrides_pyyaml"] for j in (o["jobs"] or [])][:8]
        out["hydra_only_rejects"].append(rec); continue
    if not ook:
        rec["orch_err"] = [l for l in o["err"].splitlines() if l.strip()][-4:]
        rec["hydra_jobs"] = [j["overrides_pyyaml"] for j in (h["jobs"] or [])][:8]
        out["orch_only_rejects"].append(rec); continue
    hj, oj = h["jobs"] or [], o["jobs"] or []
    probs = []
    order_free = "order-free" in r["flags"]
    if len(hj) != len(oj):
        probs.append(f"COUNT hydra={len(hj)} orch={len(oj)}")
    hov = [j["overrides_pyyaml"] for j in hj]; oov = [j["overrides_pyyaml"] for j in oj]
    if order_free:
        hk = sorted(json.dumps(x) for x in hov); ok_ = sorted(json.dumps(x) for x in oov)
        if hk != ok_: probs.append(f"OVERRIDES(set) hydra={short(hov)} orch={short(oov)}")
    else:
        if hov != oov:
            probs.append(f"OVERRIDES hydra={short(hov)} orch={short(oov)}")
    # jsonl consistency
    jl = [x[1] for x in o.get("jsonl", [])]
    if jl and jl != oov:
        probs.append(f"JSONL!=overrides.yaml jsonl={short(jl)}")
    group = "group" in r["flags"]
    if not order_free and len(hj) == len(oj):
        for i, (a, b) in enumerate(zip(hj, oj)):
            if group: break
            for kind in ("omega", "pyyaml"):
                ca, cb = a.get("config_" + kind), b.get("config_" + kind)
                if canon(ca) != canon(cb):
                    # find differing keys
                    dk = []
                    if isinstance(ca, dict) and isinstance(cb, dict):
                        for k in list(dict.fromkeys(list(ca) + list(cb))):
                            if canon(ca.get(k, "<MISSING>")) != canon(cb.get(k, "<MISSING>")):
                                dk.append(f"{k}: hydra={short(ca.get(k,'<MISSING>'),120)}({type(ca.get(k)).__name__}) orch={short(cb.get(k,'<MISSING>'),120)}({type(cb.get(k)).__name__})")
                        if list(ca) != list(cb) and not dk:
                            dk.append(f"key order hydra={list(ca)} orch={list(cb)}")
                    else:
                        dk.append(f"hydra={short(ca)} orch={short(cb)}")
                    probs.append(f"CONFIG[{kind}] job{i}: " + "; ".join(dk))
            if a["overrides_raw"] != b["overrides_raw"]:
                probs.append(f"RAW overrides job{i}: hydra={a['overrides_raw']!r} orch={b['overrides_raw']!r}")
            if a["config_raw"] != b["config_raw"]:
                import difflib
                d = [l for l in difflib.unified_diff(a["config_raw"].splitlines(), b["config_raw"].splitlines(), "hydra", "orch", n=0, lineterm="") if not l.startswith(("---", "+++", "@@"))]
                probs.append(f"RAW config job{i}: " + " | ".join(d))
    if probs:
        # collapse repeated per-job messages
        seen = []; 
        for pmsg in probs:
            key = pmsg.split(":", 1)[0].split(" job")[0] + ":" + (pmsg.split(":", 1)[1] if ":" in pmsg else "")
            seen.append(pmsg)
        rec["problems"] = seen
        out["diff"].append(rec)
    else:
        out["same"].append(r["id"])

json.dump(out, open(f"{ROOT}/summary.json", "w"), indent=1, ensure_ascii=False)
for k in ("diff", "hydra_only_rejects", "orch_only_rejects"):
    print(f"===== {k}: {len(out[k])}")
    for rec in out[k]:
        print(f"--- {rec['id']} {rec['ov']} {rec['flags'] or ''}")
        for key in ("problems", "hydra_err", "orch_err", "orch_jobs", "hydra_jobs"):
            if key in rec:
                v = rec[key]
                if key == "problems":
                    for pmsg in v[:6]: print("   ", pmsg[:700])
                    if len(v) > 6: print(f"    ... {len(v)-6} more")
                else:
                    print(f"   {key}: {short(v, 600)}")
print("===== both_reject:", len(out["both_reject"]), " ".join(r["id"] + ("!" + str(r.get("problems")) if r.get("problems") else "") for r in out["both_reject"]))
print("===== same:", len(out["same"]), " ".join(out["same"]))

# The category each case is expected in; a case in another one is a change to look at.
expected_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "expected.json")
got = {}
for k, recs in out.items():
    for rec in recs:
        got[rec if isinstance(rec, str) else rec["id"]] = k
if "--write-expected" in sys.argv:
    json.dump(dict(sorted(got.items())), open(expected_path, "w"), indent=0)
    print(f"wrote {expected_path}")
    sys.exit(0)
expected = json.load(open(expected_path))
# A shuffled list is one value in random order on both sides: such cases may match or not.
random_order = {c["id"] for c in CASES if "order-free" in c.get("flags", [])}
changed = [
    (i, expected.get(i, "?"), k) for i, k in sorted(got.items()) if expected.get(i) != k and i not in random_order
]
for i, was, now in changed:
    print(f"CHANGED {i}: expected {was}, now {now}")
print(f"{len(changed)} case(s) changed category against expected.json")
sys.exit(1 if changed else 0)
