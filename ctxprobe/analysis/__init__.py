"""Statistics over stored cells: summaries per length, effective context length, paired tests."""
