"""Compose Apps: content verification (digest chain from the signed target down to each layer)."""
