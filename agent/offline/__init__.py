"""The offline deterministic model: planning rules, answer templates and the triage rubric."""
