"""Speed and memory benchmarks (`make bench`); they report ratios, they assert nothing."""
