"""A single-process GRPO loop on the demo's SFT policy, to tell stack bugs from optimisation limits.

`fgrlhf demo`'s PPO runs go through Ray, vLLM, the scorer actors and DeepSpeed. When they do not
raise their reward, this probe asks the same question with none of that: HF `generate` samples,
the oracle scores (`fgrlhf_ray.data.oracle_scorers`, holistic or paper A's fine-grained rewards
with the demo's weights), and the project's own pure algorithm functions compute the advantages
(`compute_advantages("grpo")`: outcome GRPO for holistic, process supervision for fine-grained)
and the clipped loss (`ppo_policy_loss`). No KL penalty, no critic.

It writes one JSON line per step: the training reward (oracle quality of the sampled answers),
entropy, KL to the SFT policy (k1, per token), and every `--eval-every` steps the greedy oracle
quality on the first `--n-eval` test questions (`eval_q`) and, with `--pool N`, on the N training
questions it trains on (`pool_q`). docs/demo_experiments.md §6 reports what it showed.

    .venv/bin/python scripts/experiments/pg_probe.py out.jsonl --pool 64 --reward fine_grained --seed 1

Sizes: 16 prompts x 8 samples per step at 64 new tokens is ~10 s a step on one idle core.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from types import SimpleNamespace

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fgrlhf_ray.algo.estimators import compute_advantages
from fgrlhf_ray.algo.experience import gather_response_logprobs, pad_rollout, position_ids_from_attention_mask
from fgrlhf_ray.algo.losses import masked_mean, ppo_policy_loss
from fgrlhf_ray.algo.rewards import ScorerOutput, place_segment_rewards, token_char_offsets
from fgrlhf_ray.data import oracle_scorers

FINE_GRAINED = (("relevance", "sub_sentence", 0.3), ("factuality", "sentence", 0.5))  # + completeness 0.3


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="JSONL of per-step records")
    ap.add_argument("--demo-dir", default="outputs/demo", help="a `fgrlhf demo` output (sft/policy, data/)")
    ap.add_argument("--reward", choices=("holistic", "fine_grained"), default="holistic")
    ap.add_argument("--pool", type=int, default=0, help="train on N random training questions (0: all)")
    ap.add_argument("--prompts", type=int, default=16, help="prompts per step")
    ap.add_argument("--samples", type=int, default=8, help="samples per prompt (the GRPO group)")
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--minibatches", type=int, default=2, help="optimizer steps per PPO step (one epoch)")
    ap.add_argument("--aggregation", choices=("token_mean", "seq_mean"), default="token_mean")
    ap.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (the demo's)")
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--logprob-temperature", type=float, default=0.7,
                    help="τ of the learner's log-probs (1: raw logits, as `fgrlhf train` does)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--eval-every", type=int, default=4)
    ap.add_argument("--n-eval", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args()


class Probe:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        policy = os.path.join(a.demo_dir, "sft", "policy")
        self.tok = AutoTokenizer.from_pretrained(policy)
        self.tok.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).eval()  # dropout off
        self.ref = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).eval()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=a.lr, weight_decay=0.0)

    def generate(self, prompts: list[str], greedy: bool = False) -> tuple[dict, list[list[int]]]:
        """(tokenized prompts, response token ids up to and including EOS)."""
        enc = self.tok(prompts, return_tensors="pt", padding=True)
        sampling = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=self.a.temperature,
                                                               top_k=self.a.top_k, top_p=1.0)
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=self.a.max_new_tokens, pad_token_id=self.tok.pad_token_id,
                                      eos_token_id=self.tok.eos_token_id, **sampling)
        responses = []
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            ids = row[: row.index(self.tok.eos_token_id) + 1] if self.tok.eos_token_id in row else row
            while ids and ids[-1] == self.tok.pad_token_id != self.tok.eos_token_id:
                ids.pop()
            responses.append(ids)
        return enc, responses

    def text(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def quality(self, prompts: list[str]) -> float:
        """Mean oracle quality (Q / max Q) of greedy answers."""
        qs = []
        for i in range(0, len(prompts), 32):
            _, responses = self.generate(prompts[i:i + 32], greedy=True)
            qs += oracle_scorers.holistic(prompts[i:i + 32], [self.text(r).strip() for r in responses])
        return sum(qs) / len(qs)

    def scores(self, prompts: list[str], responses: list[list[int]], mask: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(B, T) placed rewards (holistic: Q on the last token; fine-grained: paper A's segments), mean Q."""
        raw = [self.text(r) for r in responses]
        stripped = [x.strip() for x in raw]  # what the scorers read; offsets shift by the leading spaces
        quality = oracle_scorers.holistic(prompts, stripped)
        lead = [len(x) - len(x.lstrip()) for x in raw]
        if self.a.reward == "holistic":
            outputs = [ScorerOutput(name="holistic", density="sequence", rewards=[[(len(x), q)] for x, q in zip(raw, quality)])]
        else:
            outputs = [ScorerOutput(name=name, density=density, weight=w,
                                    rewards=[[(s.char_end + n, s.value) for s in segs] for segs, n in
                                             zip(getattr(oracle_scorers, name)(prompts, stripped), lead)])
                       for name, density, w in FINE_GRAINED]
            outputs.append(ScorerOutput(name="completeness", density="sequence", weight=0.3,
                                        rewards=[[(len(x), v)] for x, v in
                                                 zip(raw, oracle_scorers.completeness(prompts, stripped))]))
        offsets = [token_char_offsets(r, self.text, text=x) for r, x in zip(responses, raw)]
        placed, _, _ = place_segment_rewards(outputs, token_offsets=offsets, action_mask=mask)
        return placed, sum(quality) / len(quality)

    def logprobs(self, model, seq: torch.Tensor, att: torch.Tensor, prompt_len: int):
        out = model(input_ids=seq, attention_mask=att, position_ids=position_ids_from_attention_mask(att))
        lp = gather_response_logprobs(out.logits, seq, prompt_len, temperature=self.a.logprob_temperature)
        return lp, out.logits[:, prompt_len - 1:-1]

    def step(self, prompts: list[str]) -> dict:
        a = self.a
        batch = [p for p in prompts for _ in range(a.samples)]
        enc, responses = self.generate(batch)
        seq, att, mask, P = pad(enc, responses, self.tok.pad_token_id)
        placed, train_quality = self.scores(batch, responses, mask)
        groups = torch.arange(len(prompts)).repeat_interleave(a.samples)
        advantages, _, _ = compute_advantages("grpo", scores=placed, mask=mask, group_ids=groups)
        with torch.no_grad():
            old = self.logprobs(self.model, seq, att, P)[0]
            ref = self.logprobs(self.ref, seq, att, P)[0]
        stats = []
        for mb in torch.randperm(len(batch)).chunk(a.minibatches):
            lp, logits = self.logprobs(self.model, seq[mb], att[mb], P)
            loss, st = ppo_policy_loss(lp, old[mb], advantages[mb], mask[mb], aggregation=a.aggregation, logits=logits)
            self.opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            stats.append(st)
        return {"train_r": train_quality, "len": float(mask.sum(1).mean()), "kl_tok": float(masked_mean(old - ref, mask)),
                "approx_kl": sum(s["approx_kl"] for s in stats) / len(stats),
                "clip": sum(s["clip_frac"] for s in stats) / len(stats), "entropy": stats[0]["entropy"]}


def pad(enc: dict, responses: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """sequences (B, P+T), attention_mask (B, P+T), action_mask (B, T), P: `pad_rollout`'s layout."""
    prompts = [ids[m.bool()].tolist() for ids, m in zip(enc["input_ids"], enc["attention_mask"])]
    batch = SimpleNamespace(prompt_ids=prompts, response_ids=responses, logprobs=[[0.0] * len(r) for r in responses])
    padded = pad_rollout(batch, pad_token_id=pad_id)
    return padded.sequences, padded.attention_mask, padded.action_mask, padded.prompt_len


def main() -> None:
    a = parse_args()
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    data = os.path.join(a.demo_dir, "data")
    train = [r["text"] for r in json.load(open(os.path.join(data, "train.json")))]
    test = [r["text"] for r in json.load(open(os.path.join(data, "test.json")))][: a.n_eval]
    pool = rng.sample(train, a.pool) if a.pool else None
    probe = Probe(a)

    def evaluate(step: int) -> dict:
        return {"eval_q": probe.quality(test), **({"pool_q": probe.quality(pool)} if pool else {})}

    with open(a.out, "w") as log:
        print(json.dumps({"step": 0, **evaluate(0)}), file=log, flush=True)
        for step in range(1, a.steps + 1):
            t0 = time.time()
            prompts = rng.sample(pool or train, a.prompts)
            rec = {"step": step, **probe.step(prompts), "sec": round(time.time() - t0, 1)}
            if step % a.eval_every == 0:
                rec.update(evaluate(step))
            print(json.dumps(rec), file=log, flush=True)
            print(rec, flush=True)


if __name__ == "__main__":
    main()
