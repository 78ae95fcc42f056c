# The before table of docs/bench/matrix/README.md from the JSON reports beside this file (run from the
# repository root): the same cells, capacities and bar as `linesight bench --matrix`.
import json,sys,math
rows=[]
print("| pipeline | background | load | capacity fps | offered fps | goodput fps | goodput / attainable | served within budget | p99 ms | worst / best camera | bar |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for p in ["detect","track"]:
  for bg in [0,1,2]:
    cap=None
    for shape in ["three","six"]:
      r=json.load(open(f"docs/bench/matrix/before/{p}-bg{bg}-{shape}.json"))
      ref=r["runs"][-1]; cap=ref["throughput_fps"]
    for shape,label in [("one","1 camera x 10 fps"),("three","3x capacity, open loop"),("six","6 closed-loop clients")]:
      r=json.load(open(f"docs/bench/matrix/before/{p}-bg{bg}-{shape}.json"))
      run=r["runs"][0]
      c = r["runs"][-1]["throughput_fps"] if shape!="one" else cap
      att=min(c,run["offered_fps"]); g=run["goodput_fps"]; ratio=g/att if att>0 else 0
      served=run["within_budget"]+run["over_budget"]; sw=run["within_budget"]/served if served else 0
      f=run.get("fairness"); wb="-"
      if f and len(f["cameras"])>1:
        w=[round(cc["frames"]*cc["within_budget_fraction"]) for cc in f["cameras"]]
        wb=f"{(min(w)/max(w) if max(w)>0 else 0):.2f}"
      ok = ratio>=0.8 and (shape=="one" or sw>=0.95) and (wb=="-" or float(wb)>=0.8)
      print(f"| {p} | {bg} busy | {label} | {c:.1f} | {run['offered_fps']:.1f} | {g:.1f} | {ratio:.2f} | {sw*100:.1f} % | {run['latency_ms']['p99']:.0f} | {wb} | {'met' if ok else 'MISSED'} |")
