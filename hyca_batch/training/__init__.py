"""How the project's own models are made: the synthetic clips ``mini`` learns from, its builders, the BPE
vocabulary and the tiny tokenizers. Training and tests use it; the runtime never imports it (an import-linter
contract in pyproject.toml), so none of it runs in a job."""
