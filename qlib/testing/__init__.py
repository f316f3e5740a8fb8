"""Test fixtures that ship with the library: the toy "doors" environment (:mod:`qlib.testing.toy`,
registered as ``toy``) with a seeded random policy, a tiny random Llama with a tiny tokenizer
(:mod:`qlib.testing.tiny`), and a stand-in behaviour-cloned agent (:mod:`qlib.testing.clone`). Tests, benchmarks and the smoke profile use them; experiments never do."""
