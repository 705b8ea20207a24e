"""Source readers: one per source, the reader registry, bulk reads, tickets and the account book."""
