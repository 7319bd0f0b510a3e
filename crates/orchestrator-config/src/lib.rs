//! Pure configuration logic for orchestrator: the seed `joblib.yaml` format, the Hydra
//! override grammar, and lazy sweep expansion. Nothing here touches processes.

pub mod compose;
pub mod grammar;
pub mod sweep;
