import json,glob
def row(f):
  r=json.load(open(f)); run=r["runs"][0]; st=run["stages_ms"]
  return f"{run['within_budget_fraction']*100:.1f} % within, p50 {run['latency_ms']['p50']:.1f} p99 {run['latency_ms']['p99']:.1f} ms; detector inference p50 {st['inference']['p50']:.1f} p99 {st['inference']['p99']:.1f}, embed p50 {st['embed']['p50']:.1f} p99 {st['embed']['p99']:.1f}, queue p99 {st['queue_wait']['p99']:.1f}, shed {run['shed']}"
for v in ["before","after"]:
  for i in range(1,6):
    print("one camera", v, i, row(f"docs/bench/track-budget/one-{v}-{i}.json"))
for v in ["gate","nogate","old"]:
  for i in [1,2]:
    print("two cameras", v, i, row(f"docs/bench/track-budget/two-{v}-{i}.json"))
