"""The embedded fixture warehouse: deterministic story and background customers, labelled tickets.

Part of the product (the embedded default seeds it on first use), so it lives below the graph."""
