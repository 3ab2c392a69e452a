"""Policy evaluation (`fgrlhf eval`): metrics, eval configs, reports (the Ray runner is `fgrlhf_ray.launch.evaluation`).

- `metrics` — pure metric functions (Rouge-LSum, dist-n, ratios, perplexity, win rate,
  toxicity), each checked against hand-computed values.
- `report.summarize` — generations + scorer verdicts → the metrics dict (pure).
- `config.EvalConfig` — what to generate with and measure.
- `fgrlhf_ray.launch.evaluation.run_eval` — vLLM engines, scorer actors and the perplexity task on Ray.
"""
