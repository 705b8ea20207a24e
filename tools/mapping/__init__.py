"""The mapping engine: declarative table/column to slice-field mappings, conversions, built-in mappings (*.yaml)."""
