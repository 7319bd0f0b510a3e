#!/usr/bin/env python3
"""Run each case of cases.py through real Hydra and through orchestrator; record what each
wrote (overrides.yaml and config.yaml of every job, read raw, with PyYAML and with OmegaConf)
in WORK/cases/<id>/result.json. Run by bench/hydra_diff.sh, which sets the environment:
WORK (results), HYDRA_PYTHON (a Python with hydra-core), ORCH (the orchestrator binary),
JOBLIB (the launcher config prepended to orchestrator's copy of each case's config)."""
import json, os, shutil, subprocess, sys, yaml
from concurrent.futures import ThreadPoolExecutor
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cases import CASES, BASE_APP

ROOT = os.environ["WORK"]
PY = os.environ["HYDRA_PYTHON"]
ORCH = os.environ["ORCH"]
JOBLIB = open(os.environ["JOBLIB"]).read()
APP_PY = '''import hydra
@hydra.main(version_base=None, config_path=".", config_name="config")
def main(cfg):
    pass
if __name__ == "__main__":
    main()
'''

def load_job(d):
    from omegaconf import OmegaConf
    out = {}
    for f in ("overrides", "config"):
        p = os.path.join(d, ".hydra", f + ".yaml")
        if not os.path.exists(p):
            out[f + "_raw"] = None; continue
        raw = open(p, encoding="utf-8").read()
        out[f + "_raw"] = raw
        try:
            out[f + "_pyyaml"] = yaml.safe_load(raw)
        except Exception as e:
            out[f + "_pyyaml"] = f"PYYAML-ERROR {e}"
        try:
            c = OmegaConf.load(p)
            out[f + "_omega"] = OmegaConf.to_container(c, resolve=False)
        except Exception as e:
            out[f + "_omega"] = f"OMEGA-ERROR {e}"
    return out

def collect(sweep):
    if not os.path.isdir(sweep):
        return None
    nums = sorted(int(n) for n in os.listdir(sweep) if n.isdigit())
    return [load_job(os.path.join(sweep, str(n))) for n in nums]

def run_case(case):
    cid = case["id"]
    d = f"{ROOT}/cases/{cid}"
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    app = case.get("app", BASE_APP)
    if isinstance(app, dict):
        app_text = yaml.safe_dump(app, sort_keys=False, allow_unicode=True)
    else:
        app_text = app
    hydra_text = app_text
    orch_text = app_text.rstrip("\n") + "\n" + JOBLIB
    if case.get("hydra_first"):
        # orchestrator's config with `hydra:` before the app's keys: their order must not change.
        orch_text = JOBLIB.rstrip("\n") + "\n" + app_text
    sp = case.get("sweeper_params")
    if sp is not None:
        sp_text = "  sweeper:\n    params:\n" + "".join(
            f"      {k}: {v}\n" for k, v in sp)
        hydra_text = hydra_text.rstrip("\n") + "\nhydra:\n" + sp_text
        orch_text = orch_text.rstrip("\n") + "\n" + sp_text
    if "orch_extra" in case:
        orch_text = case["orch_extra"] + orch_text
    if "hydra_extra" in case:
        hydra_text = case["hydra_extra"] + hydra_text
    for g, opts in case.get("groups", {}).items():
        os.makedirs(f"{d}/{g}", exist_ok=True)
        for o, body in opts.items():
            open(f"{d}/{g}/{o}.yaml", "w").write(body)
    open(f"{d}/config.yaml", "w").write(hydra_text)
    open(f"{d}/orch.yaml", "w").write(orch_text)
    open(f"{d}/app.py", "w").write(APP_PY)
    ov = case["overrides"]
    env = dict(os.environ, HYDRA_FULL_ERROR="0")
    h = subprocess.run([PY, "app.py", "--multirun", *ov, f"hydra.sweep.dir={d}/h"],
                       cwd=d, capture_output=True, text=True, env=env, timeout=300)
    o = subprocess.run([ORCH, "run", "--config", "orch.yaml", "--quiet", "--multirun", *ov,
                        f"hydra.sweep.dir={d}/o", "--", "true"],
                       cwd=d, capture_output=True, text=True, timeout=300)
    ojsonl = []
    if os.path.exists(f"{d}/o/jobs.jsonl"):
        for line in open(f"{d}/o/jobs.jsonl"):
            try: ojsonl.append(json.loads(line))
            except Exception: pass
    res = dict(id=cid, overrides=ov, note=case.get("note", ""), flags=case.get("flags", []),
               hydra=dict(rc=h.returncode, err=(h.stderr + h.stdout)[-1500:], jobs=collect(f"{d}/h")),
               orch=dict(rc=o.returncode, err=(o.stderr + o.stdout)[-1500:], jobs=collect(f"{d}/o"),
                         jsonl=sorted([(r["num"], r["overrides"]) for r in ojsonl])))
    json.dump(res, open(f"{d}/result.json", "w"), indent=1, ensure_ascii=False)
    return res

if __name__ == "__main__":
    sel = sys.argv[1:]
    cases = [c for c in CASES if not sel or any(c["id"].startswith(s) for s in sel)]
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate ids"
    with ThreadPoolExecutor(2) as ex:
        for r in ex.map(run_case, cases):
            print(r["id"], "hydra rc", r["hydra"]["rc"], "orch rc", r["orch"]["rc"], flush=True)
