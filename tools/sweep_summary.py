"""Print a sweep's JSON lines as one line per architecture and condition (for a quick look)."""

import json
import sys

for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("status") != "ran":
        print(f"{r['arch']:28s} {r.get('status')}: {r.get('error', '')}")
        continue
    for cond, e in r["conditions"].items():
        hf, gc = e["transformers"], e["gcshim"]
        def fmt(v):
            s = v["status"]
            if s == "error":
                s += (" [GCSHIM] " if v.get("in_gcshim") else " ") + v["error"][:110]
            elif s == "wrong-grads":
                s += " " + (v.get("mismatch") or "")[:80]
            elif s in ("pass", "no-recompute"):
                s += f" r={v['recomputed']} p={v.get('peak_ratio')}"
            return s
        print(f"{r['arch']:28s} {cond:28s} hf={fmt(hf):40s} gc={fmt(gc)}")
