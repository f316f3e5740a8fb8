"""Agent layer: policy backends, ReAct prompts, the one action parser, constrained actions."""
