//! Lazy sweep expansion (placeholder).
