"""Evaluation: resolve rate, Pass@k, paired comparisons, the reproduction table.

The pieces `swe-aem eval` / `reproduce` put together:
- `predictions.write_predictions(path, [Prediction(...)])`: official SWE-bench JSONL;
- `runs.load_runs(path)`: graded runs (report.json of `swe-aem grade` or the official
  harness, eval.json, per-instance JSONL) as mappings instance_id -> resolved;
- `report.write_eval_result(out_dir, runs, meta=...)`: eval.json / eval.md / eval.png
  with resolve rate per run, Pass@1 over runs with CIs and unbiased Pass@k;
- `compare` (`swe-aem compare`) and `metrics.paired_compare`: B - A with a paired
  bootstrap CI and the exact McNemar test;
- `reproduction.write_reproduction(out_dir, base_runs, aem_runs, meta=...)`: our
  delta next to the published 42.3 -> 43.7 (+1.4).
"""
