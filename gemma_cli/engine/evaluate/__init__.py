"""Evaluation: how good a model is on data it did not train on (`gemma eval`).

- `records`: an eval file → prompts, reference answers, reward columns, preference pairs.
- `likelihood`: `Scorer`, teacher-forced log-probabilities, batched under the mesh.
- `evaluator`: `evaluate`, generation scored by rewards (`engine/rewards`), likelihood and
  preference accuracy for one loaded model (`engine/sample`).
- `harness`: lm-evaluation-harness's `LM` interface over the same scoring and sampling.
"""
