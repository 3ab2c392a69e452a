"""Infrastructure every role shares: checkpoints, fault classification and actor health, seeded RNG streams, the metrics sink, one retrying HTTP client, test-only fault injection."""
