"""grpo: group-relative policy optimisation from scratch (GRPO, DAPO, Dr. GRPO, GSPO).

Shape letters used in every `# [..]` comment of this project:

    B  prompts in a batch
    G  completions sampled per prompt (SEGA calls it k)
    N  = B·G sequences (or N tokens, in token-flattened kernels: said where used)
    P  prompt length (left padded)
    T  completion length (right padded)
    V  vocabulary size
    D  hidden size

Layout of the package: `models` (loading), `config` (typed settings, CLI), `run` (run directory,
metrics, atomic writes, seeding). Math lives in one module per concept.
"""

__version__ = "0.1.0"
