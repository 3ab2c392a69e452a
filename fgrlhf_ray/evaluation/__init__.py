"""Policy evaluation (`fgrlhf eval`): metrics, eval configs, the Ray runner.

- `metrics` — pure metric functions (Rouge-LSum, dist-n, ratios, perplexity, win rate,
  toxicity), each checked against hand-computed values.
- `report.summarize` — generations + scorer verdicts → the metrics dict (pure).
- `config.EvalConfig` — what to generate with and measure.
- `runner.run_eval` — vLLM engines, scorer actors and the perplexity task on Ray.
"""
