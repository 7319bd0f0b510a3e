//! Applying overrides to a config (placeholder).
