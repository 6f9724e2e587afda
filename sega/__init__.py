"""sega: entropy-guided cognitive filtering and the Self-Evaluated Group Advantage objective.

GEM / GenPref-SEGA, arXiv 2511.13007; definitions and our choices in ALGORITHMS.md §4. Builds on
`kernels` (entropy, top-m) and `grpo` (models, sampling, loop pieces); `sega.data` holds the
preference-pair format and the bundled verifiable pairs.
"""
