"""Analysis of genotypes and runs: parameter / multiply-add counts and pictures."""
