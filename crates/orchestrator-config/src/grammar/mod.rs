//! Hydra override grammar (placeholder).
