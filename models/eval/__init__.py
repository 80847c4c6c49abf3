"""The evaluation protocol shared by every recipe and bench: intervals over seeds, paired comparisons."""
